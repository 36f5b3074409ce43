"""A real `exchange serve` with purposes that produce every answer a client app can get.

Identity tokens come from the fake RSA identity provider (real key, real JWKS) and name the client
they were issued to (`azp`), as a real provider's ID tokens do.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exchange.clients import hash_secret
from tests.conftest import write_config
from tests.idp import FakeIdP
from tests.server import Server, free_port

# Every character RFC 6749 §2.3.1 makes Basic clients form-encode: a client that skips it fails.
ODD_SECRET = "s3cret: with+plus %2B & space"
PAYMENTS = "https://payments.internal"

CLIENT_PURPOSES = """
[[clients]]
client_id = "teller"
auth_method = "none"
purposes = ["transfer.approve", "statement.read", "report.once"]

[[clients]]
client_id = "vault"
auth_method = "client_secret_basic"
secret_hash = "{secret_hash}"
purposes = ["statement.read"]

[purposes."transfer.approve"]
audience = "https://payments.internal"
ttl = 60
single_use = true
rules = [
  {{ rule = "mfa", acr_values = "urn:acr:2fa" }},
  {{ rule = "max_auth_age", seconds = 300 }},
  {{ rule = "detail", field = "amount", max = 1000 }},
]

[purposes."transfer.approve".authorization_details.payment]
payment_id = {{ type = "string", required = true }}
amount = {{ type = "number", required = true, minimum = 0.01 }}

[purposes."statement.read"]
audience = ["https://statements.internal", "https://archive.internal"]
ttl = 120

[purposes."statement.read".authorization_details.account]
number = {{ type = "string", required = true }}
period = {{ type = "string" }}

[purposes."report.once"]
audience = "https://reports.internal"
ttl = 60
rules = [{{ rule = "rate_limit", max = 1, per = 3600 }}]
"""


def client_purposes() -> str:
    return CLIENT_PURPOSES.format(secret_hash=hash_secret(ODD_SECRET))


@pytest.fixture(scope="session")
def exchange_server(
    tmp_path_factory: pytest.TempPathFactory, idp: FakeIdP, idp_ec: FakeIdP
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("client-server")
    port = free_port()
    srv = Server(write_config(folder, port, idp, idp_ec, extra=client_purposes()), port)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def identity(idp: FakeIdP, client_id: str = "teller", **claims: Any) -> str:
    """An ID token from the fake provider for `client_id` (a fresh, unique user unless `sub` is given)."""
    claims.setdefault("sub", f"user-{uuid.uuid4().hex[:12]}")
    return idp.token(azp=client_id, **claims)


def granted(server: Server, sub: str, purpose: str) -> int:
    """How many tokens the exchange's audit trail says it granted this subject for this purpose."""
    with sqlite3.connect(Path(server.config.parent) / "exchange.db") as conn:
        row = conn.execute(
            "SELECT count(*) FROM audit_records WHERE decision = 'granted' AND sub = ? AND purpose = ?",
            (sub, purpose),
        ).fetchone()
    return int(row[0])
