"""Files at rest: what the service creates is private to its user whatever the umask, and a KEK file
that others could read is refused by every command that would load it."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.server import Server, free_port

EXCHANGE = str(Path(sys.executable).with_name("exchange"))


def config_file(folder: Path, port: int, *, kek_file: str | None = None) -> Path:
    signing = f'[signing]\nkek_file = "{kek_file}"\n' if kek_file else ""
    config = folder / "exchange.toml"
    config.write_text(f"""
issuer = "http://127.0.0.1:{port}"
[store]
url = "sqlite:///var/exchange.db"
{signing}
[dev_issuer]
issuer = "http://127.0.0.1:{port}/dev-idp"
key_file = "var/dev-idp-key.json"
[[clients]]
client_id = "bank-web"
purposes = ["payments.approve"]
[purposes."payments.approve"]
audience = "https://payments.internal"
""")
    return config


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_store_key_and_dev_key_files_are_created_private_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    port = free_port()
    config = config_file(tmp_path, port)
    server = Server(config, port, umask=umask)
    try:
        server.wait_ready()
        token = subprocess.run(
            [EXCHANGE, "dev-token", "--config", str(config), "--sub", "alice"],
            capture_output=True,
            text=True,
            check=True,
            umask=umask,
        ).stdout.strip()
        form = {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
            "subject_token": token,
            "scope": "payments.approve",
            "client_id": "bank-web",
        }
        assert httpx.post(f"{server.url}/token", data=form).status_code == 200  # a write: WAL in use
        var = tmp_path / "var"
        files = ["exchange.db", "exchange.db-wal", "exchange.db-shm", "exchange.kek", "dev-idp-key.json"]
        assert {name: oct(mode(var / name)) for name in files} == {name: "0o600" for name in files}
        assert mode(var) == 0o700
    finally:
        server.stop()


def write_kek(path: Path, file_mode: int) -> None:
    path.write_text(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="))
    path.chmod(file_mode)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EXCHANGE_KEK"}
    return subprocess.run([EXCHANGE, *args], capture_output=True, text=True, timeout=60, env=env)


def assert_refused(result: subprocess.CompletedProcess[str], what: str, kek: Path, file_mode: int) -> None:
    """Exit 1 and exactly one sentence naming the file (no traceback)."""
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"error: {what}: {kek} is accessible by group or others (mode {file_mode:04o}); "
        f"allow its owner only: chmod 600 {kek}"
    ]


class TestReadableKekIsRefused:
    @pytest.mark.parametrize(
        "file_mode", [0o640, 0o604, 0o620], ids=["group-read", "world-read", "group-write"]
    )
    def test_configured_kek_file(self, tmp_path: Path, file_mode: int) -> None:
        kek = tmp_path / "exchange.kek.secret"
        write_kek(kek, file_mode)
        config = config_file(tmp_path, free_port(), kek_file=str(kek))
        for command in (["serve"], ["keys", "rotate"]):
            result = cli(*command, "--config", str(config))
            assert_refused(result, "signing.kek_file", kek, file_mode)

    def test_generated_kek_file_made_readable_later(self, tmp_path: Path) -> None:
        config = config_file(tmp_path, free_port())
        kek = tmp_path / "var" / "exchange.kek"
        assert cli("keys", "rotate", "--config", str(config)).returncode == 0  # generates it, 0600
        kek.chmod(0o644)
        for command in (["serve"], ["keys", "rotate"]):
            result = cli(*command, "--config", str(config))
            assert_refused(result, "generated KEK file", kek, 0o644)

    def test_a_private_kek_file_is_used(self, tmp_path: Path) -> None:
        kek = tmp_path / "exchange.kek.secret"
        write_kek(kek, 0o400)
        config = config_file(tmp_path, free_port(), kek_file=str(kek))
        result = cli("keys", "rotate", "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert "created: key " in result.stdout and "is current" in result.stdout
