"""The operator's commands, run as an operator would: the installed `exchange` executable."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from exchange.clients import verify_secret
from tests.conftest import write_config
from tests.idp import FakeIdP
from tests.server import Server, free_port

EXE = str(Path(sys.executable).with_name("exchange"))


def run(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], input=stdin, capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture
def config(tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP) -> Path:
    return write_config(tmp_path, free_port(), idp, idp_ec)


class TestConfigCheck:
    def test_valid_config(self, config: Path) -> None:
        result = run("config", "check", str(config))
        assert result.returncode == 0, result.stderr
        assert "ok (2 purposes, 4 clients, 2 trusted issuers)" in result.stdout

    def test_unknown_key_is_named(self, config: Path) -> None:
        config.write_text(config.read_text().replace("[signing]", "") + '\n[signing]\nalgoritm = "ES256"\n')
        result = run("config", "check", str(config))
        assert result.returncode == 1
        assert "unknown field `algoritm`" in result.stderr and "$.signing" in result.stderr

    def test_wrong_type_names_the_purpose(self, config: Path) -> None:
        config.write_text(config.read_text().replace("ttl = 120", "ttl = 5000"))
        result = run("config", "check", str(config))
        assert result.returncode == 1
        assert "$.purposes.'customer.export'.ttl" in result.stderr and "<= 900" in result.stderr

    def test_missing_required_value(self, tmp_path: Path) -> None:
        bad = tmp_path / "bad.toml"
        bad.write_text('[store]\nurl = "sqlite:///x.db"\n')
        result = run("config", "check", str(bad))
        assert result.returncode == 1
        assert "missing required field `issuer`" in result.stderr

    def test_every_cross_reference_problem_is_listed(self, config: Path) -> None:
        text = config.read_text().replace(
            'purposes = ["customer.export"]\n\n[[clients]]\nclient_id = "batch"',
            'purposes = ["nope"]\n\n[[clients]]\nclient_id = "batch"',
        )
        text = text.replace('issuer = "http://127.0.0.1', 'issuer = "ftp://127.0.0.1')
        config.write_text(text)
        result = run("config", "check", str(config))
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert any("clients[1] (backoffice).purposes: unknown purpose 'nope'" in line for line in lines)
        assert any("issuer: expected an http(s) URL" in line for line in lines)

    def test_missing_file(self, tmp_path: Path) -> None:
        result = run("config", "check", str(tmp_path / "absent.toml"))
        assert result.returncode == 1 and "no such file" in result.stderr


def test_hash_secret_reads_stdin_and_never_echoes_the_secret() -> None:
    secret = "a-long-client-secret-value"
    result = run("clients", "hash-secret", stdin=secret + "\n")
    assert result.returncode == 0
    digest = result.stdout.strip()
    assert secret not in digest and digest.startswith("scrypt$")
    assert verify_secret(secret, digest) and not verify_secret(secret + "x", digest)


def test_hash_secret_refuses_short_secrets() -> None:
    assert run("clients", "hash-secret", stdin="short\n").returncode == 1


def test_keys_rotate_reaches_the_running_service(tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP) -> None:
    port = free_port()
    config = write_config(tmp_path, port, idp, idp_ec)
    server = Server(config, port)
    try:
        server.wait_ready()
        before = httpx.get(f"{server.url}/.well-known/jwks.json").json()["keys"]
        assert len(before) == 1
        result = run("keys", "rotate", "--now", "--yes", "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("rotated now: key ")
        assert "verifiers whose cached JWKS" in result.stderr
        new_kid = result.stdout.split()[3]
        listed = [
            json.loads(line)
            for line in run("keys", "list", "--json", "--config", str(config)).stdout.splitlines()
        ]
        assert {k["kid"]: k["state"] for k in listed} == {new_kid: "current", before[0]["kid"]: "previous"}
        # The service re-reads keys every few seconds: both keys are published, the new one signs.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            kids = {k["kid"] for k in httpx.get(f"{server.url}/.well-known/jwks.json").json()["keys"]}
            if new_kid in kids:
                break
            time.sleep(0.5)
        assert kids == {new_kid, before[0]["kid"]}
    finally:
        server.stop()


def test_dev_token_is_trusted_by_the_service(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "exchange.toml"
    config.write_text(f"""
issuer = "http://127.0.0.1:{port}"
[store]
url = "sqlite:///var/exchange.db"
[dev_issuer]
issuer = "http://127.0.0.1:{port}/dev-idp"
key_file = "var/dev-idp-key.json"
[[clients]]
client_id = "bank-web"
purposes = ["payments.approve"]
[purposes."payments.approve"]
audience = "https://payments.internal"
rules = [{{ rule = "mfa" }}]
""")
    server = Server(config, port)
    try:
        server.wait_ready()
        assert (tmp_path / "var" / "dev-idp-key.json").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "var" / "exchange.kek").stat().st_mode & 0o777 == 0o600
        form = {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
            "scope": "payments.approve",
            "client_id": "bank-web",
        }
        good = run("dev-token", "--config", str(config), "--sub", "alice", "--amr", "mfa").stdout.strip()
        assert httpx.post(f"{server.url}/token", data={**form, "subject_token": good}).status_code == 200
        weak = run("dev-token", "--config", str(config), "--sub", "alice", "--amr", "pwd").stdout.strip()
        denied = httpx.post(f"{server.url}/token", data={**form, "subject_token": weak})
        assert denied.json()["denial"] == "mfa_required"
        audit = run("audit", "list", "--json", "--config", str(config))
        records = [json.loads(line) for line in audit.stdout.splitlines()]
        assert [r["decision"] for r in records] == ["denied", "granted"]
        assert good not in audit.stdout and weak not in audit.stdout
        assert "dev_issuer_trusted" in server.log.read_text()
    finally:
        server.stop()


def test_rules_explain_dry_runs_a_policy(tmp_path: Path) -> None:
    config = tmp_path / "exchange.toml"
    config.write_text("""
issuer = "http://127.0.0.1:8080"
[store]
url = "sqlite:///exchange.db"
[purposes."payments.approve"]
audience = "https://payments.internal"
rules = [{ rule = "mfa" }, { rule = "rate_limit", max = 1, per = 60 }]
""")
    claims = tmp_path / "claims.json"
    claims.write_text('{"sub": "alice", "amr": ["pwd", "otp"]}')
    for _ in range(2):  # a dry run counts nothing: the second run is allowed too
        result = run("rules", "explain", "payments.approve", "--claims", str(claims), "--config", str(config))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "decision: allow" in result.stdout
    claims.write_text('{"sub": "alice", "amr": ["pwd"]}')
    result = run("rules", "explain", "payments.approve", "--claims", str(claims), "--config", str(config))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.split()[:3] == ["mfa", "deny", "mfa_required"] for line in lines)
    assert any(line.split()[:3] == ["rate_limit[sub]", "not", "evaluated"] for line in lines)
    assert "decision: deny: mfa_required" in result.stdout
