"""The run directory of one `exchange serve`: how its processes, and the CLI, see each other.

    <run dir>/server.pid           the server's main process (what `exchange config reload` signals)
    <run dir>/workers/<pid>.json   one worker's state: its metrics snapshot and its configuration's
                                   generation and last reload, rewritten every second by the worker

`exchange serve` creates it (by default under the system's temp dir, named after the config file and
port, so `exchange config reload --config FILE` finds it) and hands it to its workers in
$EXCHANGE_RUN_DIR. A worker's file outlives the worker: its counters still count in the merged totals.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import msgspec

from exchange.metrics import Snapshot

RUN_DIR_ENV: Final = "EXCHANGE_RUN_DIR"


class RunDirError(Exception):
    """The run directory cannot be used (one sentence naming it)."""


class ReloadState(msgspec.Struct, omit_defaults=True):
    """What a worker last did with its configuration."""

    generation: int = 0  # 0: the configuration it started with; +1 per successful reload
    digest: str = ""  # SHA-256 of the configuration file in use
    loaded_at: float = 0.0
    last_attempt: float = 0.0
    last_result: str = ""  # "ok", or the first problem that kept the old configuration
    restart_needed: list[str] = msgspec.field(default_factory=list)


class WorkerState(msgspec.Struct):
    pid: int
    metrics: Snapshot
    config: ReloadState = msgspec.field(default_factory=ReloadState)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(WorkerState).decode


def _base() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "purpose-exchange"
    return Path(tempfile.gettempdir()) / f"purpose-exchange-{os.getuid()}"


def default_run_dir(config: Path, port: int) -> Path:
    """Where a server on `config` and `port` keeps its run directory unless told otherwise."""
    digest = hashlib.sha256(str(config.resolve()).encode()).hexdigest()[:12]
    return _base() / f"{digest}-{port}"


def run_dirs_for(config: Path) -> list[Path]:
    """Every run directory of servers started on this config file (one per port)."""
    base = default_run_dir(config, 0)
    return sorted(p for p in base.parent.glob(base.name.rsplit("-", 1)[0] + "-*") if p.is_dir())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, and not ours to signal
        return True
    return True


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.workers = self.path / "workers"
        self.pid_file = self.path / "server.pid"

    def create(self, pid: int) -> None:
        """Make the directory (private to this user) and claim it for the server process `pid`."""
        self.path.mkdir(parents=True, mode=0o700, exist_ok=True)
        self.workers.mkdir(mode=0o700, exist_ok=True)
        # In a shared temp dir another user could have made the folder first (and would then decide
        # which pid `config reload` signals): use only a folder that is ours and private.
        for folder in (self.path, self.workers):
            info = folder.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
                raise RunDirError(f"{folder}: not a private directory of this user; use --run-dir")
        for stale in self.workers.glob("*.json"):
            stale.unlink(missing_ok=True)  # a previous run's counters are not this run's
        self.pid_file.write_text(f"{pid}\n")

    def server_pid(self) -> int | None:
        """The live server process of this directory, if there is one."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def write(self, state: WorkerState) -> None:
        """Replace this worker's state file atomically (readers never see half a file)."""
        target = self.workers / f"{state.pid}.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(_encode(state))
        os.replace(tmp, target)

    def states(self, *, exclude: int | None = None) -> Iterator[WorkerState]:
        """Every worker's last state (dead ones too), except `exclude`'s."""
        for path in sorted(self.workers.glob("*.json")):
            if exclude is not None and path.stem == str(exclude):
                continue
            with contextlib.suppress(OSError, msgspec.DecodeError):
                yield _decode(path.read_bytes())

    def remove(self) -> None:
        for path in self.workers.glob("*"):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.workers.rmdir()
        self.pid_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.rmdir()
