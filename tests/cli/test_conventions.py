"""One CLI: every option explained, `--config` taken one way, `--json` wherever data is printed, and
one JSON convention across commands (docs/OPERATIONS.md, "CLI conventions")."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from exchange.cli import main
from exchange.cli.console import config_option, json_option
from exchange.clients import verify_secret
from tests.cli.conftest import EXE, exchange, json_lines

# Commands that print no data, or whose output is data in one fixed form; each says why.
NO_JSON_FLAG = {
    "serve": "runs the service",
    "ambassador": "runs a proxy",
    "gateway": "runs a forward-auth endpoint",
    "dev-token": "prints a bare token, to pipe into a request",
    "verify": "always prints the verified claims as one JSON object",
    "audit export": "always prints JSON Lines",
}
# Commands that read no exchange config at all; each says why.
NO_CONFIG = {
    "verify": "a downstream tool, configured by its flags",
    "ambassador": "a downstream proxy, configured by its flags",
    "gateway": "a downstream forward-auth endpoint, configured by its flags",
    "clients hash-secret": "hashes what it is given, nothing else",
}
Z_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def commands(group: click.Group = main, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            yield from commands(command, f"{path} ")
        else:
            yield path, command


def option(command: click.Command, name: str) -> click.Option | None:
    return next((p for p in command.params if isinstance(p, click.Option) and p.name == name), None)


def shared(decorator: object, name: str) -> click.Option:
    """The Option a shared decorator adds, as click builds it."""

    @click.command()
    def probe(**_: object) -> None: ...

    found = option(decorator(probe), name)  # type: ignore[operator]
    assert found is not None
    return found


ALL = list(commands())


def test_the_walk_finds_every_command() -> None:
    names = {path for path, _ in ALL}
    assert {"audit list", "audit export", "audit stats", "rules explain", "db status", "keys list"} <= names


@pytest.mark.parametrize(("path", "command"), ALL, ids=[path for path, _ in ALL])
def test_every_option_has_help_text(path: str, command: click.Command) -> None:
    silent = [p.opts[0] for p in command.params if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert not silent, f"`exchange {path}`: options without help: {silent}"
    assert (command.help or "").strip(), f"`exchange {path}` has no help text"


@pytest.mark.parametrize(("path", "command"), ALL, ids=[path for path, _ in ALL])
def test_every_data_printing_command_takes_the_one_json_flag(path: str, command: click.Command) -> None:
    found = option(command, "as_json")
    if path in NO_JSON_FLAG:
        assert found is None, f"`exchange {path}` has --json: take it off NO_JSON_FLAG"
        return
    reference = shared(json_option, "as_json")
    assert found is not None, f"`exchange {path}` prints data but has no --json"
    assert (found.opts, found.is_flag, found.help) == (reference.opts, True, reference.help)


@pytest.mark.parametrize(("path", "command"), ALL, ids=[path for path, _ in ALL])
def test_every_command_takes_the_config_file_the_same_way(path: str, command: click.Command) -> None:
    found = option(command, "config_file")
    if path in NO_CONFIG:
        assert found is None, f"`exchange {path}` reads a config: take it off NO_CONFIG"
        return
    reference = shared(config_option, "config_file")
    assert found is not None, f"`exchange {path}` has no --config"
    assert (found.opts, found.help, found.default) == (reference.opts, reference.help, reference.default)


def test_every_json_output_follows_the_one_convention(tmp_path: Path) -> None:
    config = tmp_path / "exchange.toml"
    config.write_text(f'issuer = "http://127.0.0.1:8080"\n[store]\nurl = "sqlite:///{tmp_path}/x.db"\n')
    c = ["--config", str(config)]
    single = {
        "config check": exchange("config", "check", "--json", *c),
        "db migrate": exchange("db", "migrate", "--json", *c),
        "keys rotate": exchange("keys", "rotate", "--json", *c),
        "keys export-jwks": exchange("keys", "export-jwks", "--json", *c),
        "clients hash-secret": exchange("clients", "hash-secret", "--json", stdin="s" * 20 + "\n"),
    }
    lists = {
        "db status": exchange("db", "status", "--json", *c),
        "keys list": exchange("keys", "list", "--json", *c),
        "audit list": exchange("audit", "list", "--json", *c),
        "audit stats": exchange("audit", "stats", "--json", *c),
    }
    for name, result in {**single, **lists}.items():
        assert result.returncode == 0, (name, result.stderr)
        values = json_lines(result.stdout)
        if name in single:
            assert len(values) == 1, (name, result.stdout)
        for value in values:
            for field, text in value.items():
                if field == "time" or field.endswith("_at"):
                    assert text is None or Z_TIME.match(text), (name, field, text)
    [key] = json_lines(lists["keys list"].stdout)
    assert key["kid"] == json_lines(single["keys rotate"].stdout)[0]["kid"] and key["retired_at"] is None
    assert all(m["applied"] and m["checksum_ok"] for m in json_lines(lists["db status"].stdout))


def test_hash_secret_prompts_without_echo_on_a_terminal() -> None:
    secret = "a-long-client-secret-typed-at-a-prompt"
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([EXE, "clients", "hash-secret"], stdin=terminal, stdout=subprocess.PIPE,
                            stderr=terminal, close_fds=True)  # fmt: skip
    os.close(terminal)
    try:
        seen = read_until(controller, b"Client secret: ")
        os.write(controller, secret.encode() + b"\n")
        seen += read_until(controller, b": ")  # the confirmation prompt
        os.write(controller, secret.encode() + b"\n")
        out, _ = proc.communicate(timeout=60)
        seen += drain(controller)
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert secret.encode() not in seen  # the terminal never showed it
    digest = out.decode().strip()
    assert digest.startswith("scrypt$") and verify_secret(secret, digest)


def read_until(fd: int, marker: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        assert time.monotonic() < deadline, f"no {marker!r} on the terminal, saw {seen!r}"
        if select.select([fd], [], [], 0.2)[0]:
            seen += os.read(fd, 1024)
    return seen


def drain(fd: int) -> bytes:
    seen = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        seen += chunk
    return seen
