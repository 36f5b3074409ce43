"""`exchange keys` against a running service: a wrong KEK, a KEK change, an emergency revoke, and a
replica that cannot open its current key. Real processes, a real SQLite store, real HTTP."""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from exchange.errors import ConfigError
from exchange.kek import KeyEncryption, kek_id
from exchange.verify import PurposeTokenVerifier
from exchange.verify.errors import VerificationError
from exchange.verify.jwks import JWKSCache
from tests.cli.conftest import EXE
from tests.conftest import exchange_form, new_kek, write_config
from tests.idp import FakeIdP
from tests.server import Server, free_port


def kek_bytes(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


class Service:
    """One service process on a SQLite store, restartable, and the CLI run beside it."""

    def __init__(self, folder: Path, idp: FakeIdP, idp_ec: FakeIdP) -> None:
        self.port = free_port()
        self.config = write_config(folder, self.port, idp, idp_ec)
        self.db = folder / "exchange.db"
        self.idp = idp
        self.server: Server | None = None

    def start(self, **env: str) -> Server:
        if self.server is not None:
            self.server.stop()
        self.server = Server(self.config, self.port, env=self.env(env))
        self.server.wait_ready()
        return self.server

    @staticmethod
    def env(extra: dict[str, str]) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_KEK")}
        return {**base, **extra}

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [EXE, "keys", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env(env),
        )

    def rows(self) -> list[dict[str, Any]]:
        with sqlite3.connect(self.db) as conn:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute("SELECT * FROM signing_keys ORDER BY kid").fetchall()]
        conn.close()
        return rows

    def current(self) -> str:
        [kid] = [r["kid"] for r in self.rows() if r["state"] == "current"]
        return str(kid)

    def token(self) -> httpx.Response:
        assert self.server is not None
        return httpx.post(f"{self.server.url}/token", data=exchange_form(self.idp.token()), timeout=10)

    def signed_kid(self) -> str:
        resp = self.token()
        assert resp.status_code == 200, resp.text
        return str(pyjwt.get_unverified_header(resp.json()["access_token"])["kid"])

    def published(self) -> set[str]:
        assert self.server is not None
        keys = httpx.get(f"{self.server.url}/.well-known/jwks.json", timeout=10).json()["keys"]
        return {k["kid"] for k in keys}

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.fixture
def service(tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP) -> Iterator[Service]:
    svc = Service(tmp_path, idp, idp_ec)
    try:
        yield svc
    finally:
        svc.stop()


def until(condition: Callable[[], bool], what: str, within: float = 20.0) -> None:
    """Wait for something the service does on its own (the key watch polls every 2 s)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within:.0f} s: {what}"
        time.sleep(0.2)


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def private_pem(path: Path) -> Path:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


def test_every_key_writing_command_refuses_a_wrong_kek_and_the_service_keeps_signing(
    service: Service, tmp_path: Path
) -> None:
    good, wrong = new_kek(), new_kek()
    service.start(EXCHANGE_KEK=good)
    kid = service.current()
    assert service.signed_kid() == kid
    before = service.rows()
    pem = private_pem(tmp_path / "mine.pem")

    for command in (
        ["rotate"],
        ["rotate", "--now", "--yes"],
        ["revoke", kid, "--yes"],
        ["rewrap", "--yes"],
        ["import", "--pem", str(pem)],
    ):
        result = service.cli(*command, EXCHANGE_KEK=wrong)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert errors(result) == [
            f"error: the KEK given cannot decrypt signing key {kid} (current); nothing was changed (give "
            "the service's KEK as EXCHANGE_KEK or signing.kek_file, and during a KEK change the old one "
            "as EXCHANGE_KEK_PREVIOUS)"
        ], command
        assert result.stdout == ""

    assert service.rows() == before
    assert service.signed_kid() == kid
    service.start(EXCHANGE_KEK=good)  # and it restarts
    assert service.signed_kid() == kid


def test_rewrap_moves_every_key_to_the_new_kek_while_the_service_signs(service: Service) -> None:
    old, new = new_kek(), new_kek()
    service.start(EXCHANGE_KEK=old)
    assert service.cli("rotate", EXCHANGE_KEK=old).returncode == 0  # a staged key too: two to rewrap
    first = service.current()

    # Step 1 of the runbook: every replica restarted with both KEKs (the new one in use).
    service.start(EXCHANGE_KEK=new, EXCHANGE_KEK_PREVIOUS=old)
    assert service.signed_kid() == first
    # Step 2: rewrap, with the same two variables.
    result = service.cli("rewrap", "--yes", EXCHANGE_KEK=new, EXCHANGE_KEK_PREVIOUS=old)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"rewrapped 2 keys under KEK {kek_id(kek_bytes(new))}")

    rows = service.rows()
    assert [r["kek_id"] for r in rows] == [kek_id(kek_bytes(new))] * 2
    for row in rows:
        with pytest.raises(ConfigError):
            KeyEncryption(kek_bytes(old)).open(row["kid"], row["private_jwk"])  # trial, ignoring the id
        assert b'"d"' in KeyEncryption(kek_bytes(new)).open(row["kid"], row["private_jwk"], row["kek_id"])
    assert service.signed_kid() == first

    # The old KEK opens nothing now: alone, it is refused; the new one alone writes and signs.
    assert service.cli("rotate", "--now", "--yes", EXCHANGE_KEK=old).returncode == 1
    rotated = service.cli("rotate", "--now", "--yes", EXCHANGE_KEK=new)
    assert rotated.returncode == 0, rotated.stderr
    second = service.current()
    until(lambda: service.signed_kid() == second, "the service signs with the key promoted after the rewrap")
    service.start(EXCHANGE_KEK=new)  # Step 3: the previous KEK removed
    assert service.signed_kid() == second


def test_revoke_unpublishes_the_key_at_once_and_the_service_never_signs_with_it_again(
    service: Service,
) -> None:
    service.start()
    assert service.server is not None
    revoked = service.current()
    old_token = service.token().json()["access_token"]
    now = [0.0]
    verifier = PurposeTokenVerifier(
        issuer=service.server.url,
        audience="https://payments.internal",
        jwks=JWKSCache(f"{service.server.url}/.well-known/jwks.json", clock=lambda: now[0], cooldown=0),
    )
    assert verifier.verify(old_token).sub == "alice"

    refused = service.cli("revoke", revoked)
    assert refused.returncode == 1 and "add --yes" in errors(refused)[0]
    assert service.current() == revoked

    result = service.cli("revoke", revoked, "--yes")
    assert result.returncode == 0, result.stderr
    assert f"WARNING: key {revoked} is revoked" in result.stderr
    replacement = service.current()
    assert result.stdout.strip() == f"revoked: key {revoked}; key {replacement} signs instead"
    [row] = [r for r in service.rows() if r["kid"] == revoked]
    assert (row["state"], row["private_jwk"], row["revoked"]) == ("retired", None, 1)

    until(lambda: service.published() == {replacement}, "the JWKS drops the revoked key")
    now[0] += 301  # the verifier's cached JWKS expires: it refreshes, and the revoked key is gone
    with pytest.raises(VerificationError) as failed:
        verifier.verify(old_token)
    assert failed.value.reason == "unknown_key"
    for _ in range(5):
        assert service.signed_kid() == replacement
    fresh = service.token().json()["access_token"]
    assert verifier.verify(fresh).sub == "alice"
    service.start()
    assert service.signed_kid() == replacement
    assert revoked not in service.published()


def test_a_replica_that_cannot_open_its_current_key_refuses_to_mint_and_says_why(service: Service) -> None:
    server = service.start()
    kid = service.current()
    # Someone writes a current key sealed under another KEK behind the service's back (hand-written SQL).
    stranger = KeyEncryption(os.urandom(32))
    with sqlite3.connect(service.db) as conn:
        conn.execute("UPDATE signing_keys SET state = 'previous', deactivated_at = 1 WHERE kid = ?", (kid,))
        conn.execute(
            "INSERT INTO signing_keys (kid, alg, state, created_at, activated_at, public_jwk, private_jwk,"
            " kek_id) SELECT 'alien', alg, 'current', 2, 2, public_jwk, ?, ? FROM signing_keys WHERE kid = ?",
            (stranger.seal("alien", b"{}"), stranger.kek_id, kid),
        )
    conn.close()

    until(lambda: service.token().status_code == 503, "the replica stops minting")
    resp = service.token()
    assert resp.json()["error"] == "temporarily_unavailable"
    ready = httpx.get(f"{server.url}/readyz", timeout=10)
    assert ready.status_code == 503
    [check] = [c for c in ready.json()["checks"] if c["name"] == "signing_key"]
    assert check["status"] == "down"
    assert check["detail"].startswith("cannot sign: signing key alien: cannot decrypt it with this KEK")
    assert "alien" in service.published()  # what the store publishes is still served


def test_a_lost_kek_is_replaced_only_by_the_explicit_kek_lost_rotation(service: Service) -> None:
    lost, new = new_kek(), new_kek()
    service.start(EXCHANGE_KEK=lost)
    old = service.current()
    service.stop()

    assert service.cli("rotate", "--now", "--yes", EXCHANGE_KEK=new).returncode == 1  # proves, refuses
    half = service.cli("rotate", "--kek-lost", "--yes", EXCHANGE_KEK=new)
    assert half.returncode == 1 and errors(half) == [
        "error: --kek-lost revokes every key (each token they signed fails); give it with --now --yes"
    ]
    result = service.cli("rotate", "--now", "--yes", "--kek-lost", EXCHANGE_KEK=new)
    assert result.returncode == 0, result.stderr
    assert f"WARNING: revoked 1 keys sealed under the lost KEK ({old})" in result.stderr
    [row] = [r for r in service.rows() if r["kid"] == old]
    assert (row["state"], row["private_jwk"], row["revoked"]) == ("retired", None, 1)

    service.start(EXCHANGE_KEK=new)
    assert service.signed_kid() == service.current() != old
    assert old not in service.published()
