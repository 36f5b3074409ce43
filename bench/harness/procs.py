"""Processes: start a server pinned to its CPUs, wait for it, read its CPU and memory, stop it.

The machine has two cores: a server runs on SERVER_CPUS and the load generator on LOAD_CPUS, so they
never take each other's core. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections import deque
from pathlib import Path

SERVER_CPUS, LOAD_CPUS = "0", "1"
ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"


def can_pin() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pin(cpus: str) -> list[str]:
    """argv prefix pinning a command to `cpus` ("0", "0,1"), or nothing where that is impossible."""
    return ["taskset", "-c", cpus] if can_pin() else []


def pin_self(cpus: str = LOAD_CPUS) -> None:
    """Keep the bench script (and its in-process work) off the server's core."""
    if can_pin():
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def pinning_note(server_cpus: str = SERVER_CPUS) -> str:
    if not can_pin():
        return "no pinning (taskset or a second CPU is missing)"
    return f"server on CPU {server_cpus}, load generator on CPU {LOAD_CPUS}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (granian's workers, node's helpers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (those still alive)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        if (fields := _stat_fields(p)) is not None:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def rss_bytes(pids: list[int]) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for p in pids:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return total


def pids_named(name: str) -> list[int]:
    """Processes whose command name is `name` (e.g. every PostgreSQL backend on the machine)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == name:
                    out.append(int(entry))
            except OSError:
                pass
    return out


def core_jiffies(cpus: str) -> tuple[int, int, int]:
    """(busy, total, softirq) jiffies summed over `cpus`, from /proc/stat: who else used the core."""
    want = {f"cpu{c}" for c in cpus.split(",")}
    busy = total = softirq = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name in want:
            v = [int(x) for x in values[:8]]
            total += sum(v)
            busy += sum(v) - v[3] - v[4]
            softirq += v[6]
    return busy, total, softirq


class Process:
    """A server started in its own session, its output kept (last lines only) for error messages."""

    def __init__(
        self, name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
    ):
        self.name, self.argv = name, argv
        self.command = shlex.join(argv)
        self._tail: deque[str] = deque(maxlen=60)
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        # A reader thread drains the output (a JSON line per decision: a pipe must never fill up)
        # and keeps only the tail, so a ten-minute run writes nothing to disk.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            self._tail.append(line.decode(errors="replace").rstrip())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self) -> str:
        return "\n".join(self._tail)

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def wait_http(self, url: str, *, timeout: float = 30.0, method: str = "GET") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                data = b"a=b" if method == "POST" else None
                req = urllib.request.Request(url, data=data, method=method)
                with urllib.request.urlopen(req, timeout=1.0) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready at {url} in {timeout:g}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(5)

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
