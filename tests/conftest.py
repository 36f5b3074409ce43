"""Shared fixtures. Feature areas keep their own fixtures in their folder's conftest.py."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exchange.clients import hash_secret
from tests.idp import FakeIdP
from tests.server import Server, free_port

pytest_plugins = ["tests.pg", "tests.backends"]

CLIENT_SECRET = "backoffice-secret-0123456789"
RSA_ISSUER = "https://idp.example.com"
EC_ISSUER = "https://idp-ec.example.com"


@pytest.fixture(scope="session")
def idp() -> FakeIdP:
    return FakeIdP(RSA_ISSUER, "idp_rsa", "RS256")


@pytest.fixture(scope="session")
def idp_ec() -> FakeIdP:
    return FakeIdP(EC_ISSUER, "idp_ec", "ES256")


# Tests read the counts of unauthenticated denials soon after the requests: one-second windows.
TEST_AUDIT = "tally_window = 1"


def write_config(
    folder: Path,
    port: int,
    idp: FakeIdP,
    idp_ec: FakeIdP,
    store_url: str | None = None,
    extra: str = "",
    audit: str = TEST_AUDIT,
) -> Path:
    """A config exercising every client auth method and a few purposes; `audit` is the [audit] table.

    The fake identity providers' tokens are audienced to the exchange alone (no azp), so every client
    here is configured to present tokens issued to "purpose-exchange"; the default binding (a client
    presents only tokens issued to itself) is tested in tests/test_binding.py.
    """
    client_jwks = FakeIdP("signer", "client_ec", "ES256").write_jwks(folder / "client-jwks.json")
    config = folder / "exchange.toml"
    config.write_text(f'''
issuer = "http://127.0.0.1:{port}"

[store]
url = "{store_url or "sqlite:///" + str(folder / "exchange.db")}"

[audit]
{audit}

[[trusted_issuers]]
issuer = "{idp.issuer}"
jwks_file = "{idp.write_jwks(folder / "idp-jwks.json")}"
audiences = ["purpose-exchange"]
algorithms = ["RS256"]

[[trusted_issuers]]
issuer = "{idp_ec.issuer}"
jwks_file = "{idp_ec.write_jwks(folder / "idp-ec-jwks.json")}"
audiences = ["purpose-exchange", "other-app"]
algorithms = ["ES256"]

[[clients]]
client_id = "bank-web"
tokens_issued_to = ["purpose-exchange"]
auth_method = "none"
purposes = ["payments.approve", "customer.export"]

[[clients]]
client_id = "backoffice"
tokens_issued_to = ["purpose-exchange"]
auth_method = "client_secret_basic"
secret_hash = "{hash_secret(CLIENT_SECRET)}"
purposes = ["customer.export"]

[[clients]]
client_id = "batch"
tokens_issued_to = ["purpose-exchange"]
auth_method = "client_secret_post"
secret_hash = "{hash_secret(CLIENT_SECRET)}"
purposes = ["customer.export"]

[[clients]]
client_id = "signer"
tokens_issued_to = ["purpose-exchange"]
auth_method = "private_key_jwt"
jwks_file = "{client_jwks}"
purposes = ["customer.export"]

[purposes."payments.approve"]
audience = "https://payments.internal"
ttl = 60
rules = [{{ rule = "claim", claim = "amr", contains = "mfa" }}]

[purposes."customer.export"]
audience = ["https://crm.internal", "https://export.internal"]
ttl = 120
{extra}
''')
    return config


def pg_config(
    folder: Path, port: int, idp: FakeIdP, idp_ec: FakeIdP, url: str, extra: str = "", audit: str = TEST_AUDIT
) -> Path:
    """The shared test config on PostgreSQL, with short store timeouts so outage answers come quickly."""
    config = write_config(folder, port, idp, idp_ec, store_url=url, extra=extra, audit=audit)
    text = config.read_text().replace(
        f'url = "{url}"', f'url = "{url}"\nconnect_timeout = 1.0\ncommand_timeout = 2.0\npool_max_size = 5'
    )
    config.write_text(text)
    return config


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, idp: FakeIdP, idp_ec: FakeIdP) -> Iterator[Server]:
    """One real service process for the HTTP tests (SQLite store, generated KEK)."""
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    srv = Server(write_config(folder, port, idp, idp_ec), port)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def exchange_form(subject_token: str, /, **params: Any) -> dict[str, Any]:
    form: dict[str, Any] = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": subject_token,
        "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
        "scope": "payments.approve",
        "client_id": "bank-web",
    }
    for name, value in params.items():
        if value is None:
            form.pop(name, None)
        else:
            form[name] = value
    return form


def new_kek() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
