"""The operator's commands, run as an operator runs them: the installed `exchange` executable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import exchange_form
from tests.server import Server

EXE = str(Path(sys.executable).with_name("exchange"))


def exchange(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], input=stdin, capture_output=True, text=True, timeout=60)


def json_lines(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line is one JSON object (the CLI's JSON convention)."""
    values = [json.loads(line) for line in stdout.splitlines()]
    assert all(isinstance(v, dict) for v in values), stdout
    return values


def post_exchange(server: Server, subject_token: str, request_id: str, **form: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}/token",
        data=exchange_form(subject_token, **form),
        headers={"X-Request-ID": request_id},
        timeout=10,
    )
