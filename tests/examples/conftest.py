"""A real browser for the example apps: Debian's Chromium driven by Playwright (never its own build).

Chromium is installed here when missing (`apt-get install -y chromium`): CI machines start without it.
When it cannot be had, the browser tests skip, except under CI ($CI set), where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Root in a container: no sandbox; and nothing that phones home or updates itself during a test.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _install_chromium() -> str | None:
    """None once /usr/bin/chromium exists, else why it could not be installed."""
    if CHROMIUM.exists():
        return None
    if shutil.which("apt-get") is None:
        return "no /usr/bin/chromium and no apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    # A fresh machine may have no package lists yet: update once, then try again.
    for command in (install, ["apt-get", "update", "-q"], install):
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
        if command is install and result.returncode == 0 and CHROMIUM.exists():
            return None
    return f"apt-get install chromium failed: {result.stderr.strip()[-500:]}"


@pytest.fixture(scope="session")
def chromium() -> Path:
    problem = _install_chromium()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests are mandatory under CI: {problem}", pytrace=False)
        pytest.skip(problem)
    return CHROMIUM


class App:
    """A Python web app run as its own process (as a person would run it), on a loopback port."""

    def __init__(self, script: Path, port: int, env: dict[str, str], log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "--port", str(port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )

    def wait_ready(self, path: str = "/health", timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.url} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + path, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.url} not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture
def apps() -> Iterator[list[App]]:
    """Started apps are stopped at the end of the test, whatever happens."""
    started: list[App] = []
    yield started
    for app in started:
        app.stop()
