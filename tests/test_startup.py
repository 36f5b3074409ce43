"""Failing clearly: every start-up failure is one sentence naming the key, file or variable, exit 1,
no traceback (unless --debug); `config check` predicts them; a port another process holds is refused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import new_kek, write_config
from tests.idp import FakeIdP
from tests.server import Server, free_port

EXE = str(Path(sys.executable).with_name("exchange"))


def exchange(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in {"EXCHANGE_KEK", "EXCHANGE_CONFIG"}}
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=60, env={**full_env, **(env or {})}
    )


def one_sentence(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def config(tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP) -> Path:
    return write_config(tmp_path, free_port(), idp, idp_ec)


def with_text(config: Path, old: str, new: str) -> Path:
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new, 1))
    return config


class TestPredictedByConfigCheck:
    """Each failure: `config check` says it, and `serve` refuses with the same sentence."""

    def both(self, config: Path, *needles: str, env: dict[str, str] | None = None) -> None:
        checked = one_sentence(exchange("config", "check", "--config", str(config), env=env), *needles)
        served = one_sentence(exchange("serve", "--config", str(config), "--port", str(free_port()), env=env))
        assert served == checked

    def test_a_missing_secret_hash_variable_is_named(self, config: Path) -> None:
        text = config.read_text()
        start = text.index('secret_hash = "scrypt', text.index('client_id = "backoffice"'))
        end = text.index("\n", start)
        config.write_text(text[:start] + 'secret_hash_env = "BACKOFFICE_SECRET_HASH"' + text[end:])
        self.both(config, "clients[1] (backoffice)", "$BACKOFFICE_SECRET_HASH is not set")

    def test_postgresql_without_a_kek_names_the_variable(self, config: Path) -> None:
        with_text(
            config, 'url = "sqlite:///', 'url = "postgresql://exchange@127.0.0.1:1/x"\n# was "sqlite:///'
        )
        self.both(config, "EXCHANGE_KEK")

    def test_a_malformed_kek_names_the_variable(self, config: Path) -> None:
        self.both(config, "EXCHANGE_KEK", "32 bytes", env={"EXCHANGE_KEK": "dG9vLXNob3J0"})

    def test_an_unparseable_jwks_file_is_named(self, config: Path, tmp_path: Path) -> None:
        (tmp_path / "idp-jwks.json").write_text("{not json")
        self.both(config, "trusted_issuers[0]", "idp-jwks.json", "cannot load JWKS")

    def test_an_unsupported_store_url_is_named(self, config: Path) -> None:
        with_text(config, 'url = "sqlite:///', 'url = "mysql://db/x"\n# was "sqlite:///')
        self.both(config, "store.url", "'mysql'")

    def test_a_kek_file_others_can_read_is_refused(self, config: Path, tmp_path: Path) -> None:
        kek = tmp_path / "kek"
        kek.write_text(new_kek())
        kek.chmod(0o644)
        with_text(config, "[store]", f'[signing]\nkek_file = "{kek}"\n\n[store]')
        self.both(config, "signing.kek_file", "accessible by group or others", "chmod 600")

    def test_a_missing_kek_file_is_named(self, config: Path, tmp_path: Path) -> None:
        with_text(config, "[store]", f'[signing]\nkek_file = "{tmp_path / "absent.kek"}"\n\n[store]')
        self.both(config, "signing.kek_file", "absent.kek", "does not exist")


def test_debug_shows_the_traceback_too(config: Path) -> None:
    config.write_text("issuer = \n")
    one_sentence(exchange("config", "check", "--config", str(config)), "not valid TOML")
    result = exchange("--debug", "config", "check", "--config", str(config))
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "not valid TOML" in result.stderr


def test_config_check_connect_names_an_unreachable_store_and_jwks_uri(config: Path) -> None:
    dead = free_port()
    with_text(
        config, 'url = "sqlite:///', f'url = "postgresql://exchange@127.0.0.1:{dead}/x"\n# was "sqlite:///'
    )
    text = config.read_text()
    start = text.index("jwks_file =")
    config.write_text(
        text[:start] + f'jwks_uri = "http://127.0.0.1:{dead}/jwks"' + text[text.index("\n", start) :]
    )
    plain = exchange("config", "check", "--config", str(config), env={"EXCHANGE_KEK": new_kek()})
    assert plain.returncode == 0, plain.stderr  # no network without --connect
    result = exchange(
        "config", "check", "--connect", "--config", str(config), env={"EXCHANGE_KEK": new_kek()}
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert any("store.url" in e and "cannot connect" in e for e in errors), errors
    assert any(
        "trusted_issuers[0]" in e and f"127.0.0.1:{dead}/jwks could not be fetched" in e for e in errors
    )


def test_a_failure_inside_the_worker_is_one_json_line_not_a_traceback(config: Path) -> None:
    kek, other = new_kek(), new_kek()
    port = free_port()
    first = Server(config, port, env={"EXCHANGE_KEK": kek})
    first.wait_ready()
    first.stop()
    # The stored signing key cannot be decrypted with another KEK: only the worker finds out.
    result = exchange("serve", "--config", str(config), "--port", str(port), env={"EXCHANGE_KEK": other})
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    import json

    lines = [json.loads(line) for line in output.splitlines()]
    failed = [r for r in lines if r["event"] == "startup_failed"]
    assert len(failed) == 1 and "cannot decrypt it with this KEK (wrong EXCHANGE_KEK?)" in failed[0]["error"]


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


class TestPortInUse:
    def test_serve_refuses_a_port_another_process_listens_on(self, config: Path, held_port: int) -> None:
        one_sentence(
            exchange("serve", "--config", str(config), "--port", str(held_port)),
            f"--port 127.0.0.1:{held_port} is already in use by another process",
        )

    def test_a_second_server_on_a_running_servers_port_is_refused(self, config: Path, tmp_path: Path) -> None:
        port = free_port()
        running = Server(config, port)
        try:
            running.wait_ready()
            second = exchange(
                "serve", "--config", str(config), "--port", str(port), "--run-dir", str(tmp_path / "r2")
            )
            one_sentence(second, f"127.0.0.1:{port} is already in use")
        finally:
            running.stop()

    def test_the_metrics_listener_port_is_checked_too(self, config: Path, held_port: int) -> None:
        config.write_text(config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{held_port}"\n')
        one_sentence(
            exchange("serve", "--config", str(config), "--port", str(free_port())),
            f"metrics.listen 127.0.0.1:{held_port} is already in use",
        )

    def test_the_ambassador_refuses_a_port_in_use(self, held_port: int, tmp_path: Path, idp: FakeIdP) -> None:
        jwks = idp.write_jwks(tmp_path / "jwks.json")
        result = exchange(
            "ambassador", "--listen", f"127.0.0.1:{held_port}", "--upstream", "http://127.0.0.1:9",
            "--issuer", "https://exchange.example", "--audience", "payments", "--jwks-file", str(jwks),
        )  # fmt: skip
        one_sentence(result, f"127.0.0.1:{held_port} is already in use")
