"""FileReplayGuard: single use across the processes of one host, through one SQLite file."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from joserfc.jwk import Key

from exchange.verify import FileReplayGuard
from tests.verify.conftest import public_jwks


def _race(path: str, start: multiprocessing.synchronize.Barrier, wins: multiprocessing.Queue[bool]) -> None:
    guard = FileReplayGuard(path)
    start.wait()
    wins.put(guard.consume_sync("https://exchange.test", "jti-race", 2000.0, now=1000.0))


class TestFileReplayGuard:
    def test_a_jti_is_accepted_once_until_it_expires(self, tmp_path: Path) -> None:
        guard = FileReplayGuard(tmp_path / "replays.sqlite3")
        assert guard.consume_sync("iss", "a", 1010.0, now=1000.0) is True
        assert guard.consume_sync("iss", "a", 1010.0, now=1005.0) is False
        assert guard.consume_sync("other-iss", "a", 1010.0, now=1005.0) is True  # per issuer
        assert guard.consume_sync("iss", "a", 1030.0, now=1010.0) is True  # expired: the row is reused

    def test_another_guard_on_the_same_file_sees_the_jti(self, tmp_path: Path) -> None:
        path = tmp_path / "replays.sqlite3"
        assert FileReplayGuard(path).consume_sync("iss", "b", 1100.0, now=1000.0) is True
        assert FileReplayGuard(path).consume_sync("iss", "b", 1100.0, now=1001.0) is False

    async def test_the_async_face_decides_alike(self, tmp_path: Path) -> None:
        guard = FileReplayGuard(tmp_path / "replays.sqlite3")
        assert await guard.consume("iss", "c", 1100.0, now=1000.0) is True
        assert await guard.consume("iss", "c", 1100.0, now=1000.0) is False
        await guard.close()

    def test_the_file_is_private(self, tmp_path: Path) -> None:
        old = os.umask(0)
        try:
            FileReplayGuard(tmp_path / "replays.sqlite3")
        finally:
            os.umask(old)
        assert stat.S_IMODE((tmp_path / "replays.sqlite3").stat().st_mode) == 0o600

    def test_processes_racing_on_one_jti_have_one_winner(self, tmp_path: Path) -> None:
        context = multiprocessing.get_context("spawn")
        start = context.Barrier(4)
        wins: multiprocessing.Queue[bool] = context.Queue()
        path = str(tmp_path / "replays.sqlite3")
        FileReplayGuard(path).consume_sync("warm", "up", 1.0, now=0.0)  # schema in place before the race
        racers = [context.Process(target=_race, args=(path, start, wins)) for _ in range(4)]
        for racer in racers:
            racer.start()
        results = [wins.get(timeout=60) for _ in racers]
        for racer in racers:
            racer.join(30)
        assert sorted(results) == [False, False, False, True]


class TestAFileOthersCanWrite:
    """Red team round 2: the guard opened whatever was at its path. A replay file in a shared folder,
    prepared by another local user (world-writable, or a symlink to their file), let them delete used
    jtis and replay single-use tokens."""

    def test_a_file_others_can_write_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "replays.sqlite3"
        FileReplayGuard(path).consume_sync("iss", "c", 1100.0, now=1000.0)
        os.chmod(path, 0o666)
        with pytest.raises(ValueError, match="others can read or write it"):
            FileReplayGuard(path)

    def test_a_journal_others_can_write_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "replays.sqlite3"
        wal = tmp_path / "replays.sqlite3-wal"
        wal.touch()
        os.chmod(wal, 0o666)
        with pytest.raises(ValueError, match=r"replays\.sqlite3-wal"):
            FileReplayGuard(path)

    def test_a_symlink_is_refused(self, tmp_path: Path) -> None:
        elsewhere = tmp_path / "theirs.sqlite3"
        elsewhere.touch(mode=0o600)
        (tmp_path / "replays.sqlite3").symlink_to(elsewhere)
        with pytest.raises(ValueError, match="cannot open it privately"):
            FileReplayGuard(tmp_path / "replays.sqlite3")

    def test_the_ambassador_refuses_to_start_on_it(self, tmp_path: Path, ec_key: Key) -> None:
        path = tmp_path / "replays.sqlite3"
        path.touch()
        os.chmod(path, 0o666)
        jwks = tmp_path / "jwks.json"
        jwks.write_text(json.dumps(public_jwks(ec_key)))
        done = subprocess.run(
            [str(Path(sys.executable).parent / "exchange"), "ambassador", "--listen", "127.0.0.1:1",
             "--upstream", "http://127.0.0.1:2", "--issuer", "https://exchange.test", "--audience", "a",
             "--jwks-file", str(jwks), "--replay-file", str(path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1
        assert "others can read or write it" in done.stderr and "Traceback" not in done.stderr
