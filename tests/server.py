"""Run the real service (`exchange serve`) as a subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(
        self,
        config: Path,
        port: int,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        *,
        umask: int = -1,
    ) -> None:
        self.config, self.port = config, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = config.with_suffix(f".{port}.log")
        exe = Path(sys.executable).with_name("exchange")
        self._log_fh = self.log.open("wb")
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--config", str(config), "--port", str(port), *args],
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            umask=umask,  # -1: inherit ours
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log.read_text()[-4000:]}")

    def audit(self, request_id: str) -> dict[str, Any]:
        """The stored audit record of one request (SQLite servers: read the file the server writes)."""
        db = self.config.parent / "exchange.db"
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM audit_records WHERE request_id = ?", (request_id,)).fetchone()
        assert row is not None, f"no audit record for {request_id}"
        return dict(row)

    def lines(self) -> list[str]:
        """What the server has written so far (stdout and stderr), line by line."""
        return self.log.read_text().splitlines()

    def audit_exists(self, request_id: str) -> bool:
        db = self.config.parent / "exchange.db"
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT 1 FROM audit_records WHERE request_id = ?", (request_id,)).fetchone()
        conn.close()
        return row is not None

    def denial_count(self, timeout: float = 20.0, **match: str | None) -> dict[str, Any]:
        """The counted unauthenticated denial matching `match` (column = value), once its window is
        written (SQLite servers; the test config's windows are one second)."""
        db = self.config.parent / "exchange.db"
        deadline = time.monotonic() + timeout
        while True:
            with sqlite3.connect(db) as conn:
                conn.row_factory = sqlite3.Row
                rows = [dict(r) for r in conn.execute("SELECT * FROM unauthenticated_denials").fetchall()]
            conn.close()
            found = [r for r in rows if all(r[k] == ("" if v is None else v) for k, v in match.items())]
            if found:  # the first window it was counted in
                return min(found, key=lambda r: r["window_start"])
            assert time.monotonic() < deadline, f"no denial count like {match} in {rows}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log_fh.close()
