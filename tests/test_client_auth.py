"""Client authentication over real HTTP (RFC 6749 §2.3, RFC 7521, RFC 7523): an assertion or a secret
authenticates exactly the client whose registered credentials verify it, on both stores."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from tests.conftest import exchange_form, new_kek, pg_config, write_config
from tests.idp import FakeIdP, load_key
from tests.server import Server, free_port

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# A second private_key_jwt client with a key of its own, beside the shared config's "signer".
SECOND_SIGNER = """
[[clients]]
client_id = "signer-b"
auth_method = "private_key_jwt"
jwks_file = "{jwks}"
purposes = ["customer.export", "payments.approve"]
"""


def client_config(
    folder: Path, port: int, idp: FakeIdP, idp_ec: FakeIdP, store_url: str | None = None
) -> Path:
    jwks = FakeIdP("signer-b", "client_b_ec", "ES256").write_jwks(folder / "client-b-jwks.json")
    extra = SECOND_SIGNER.format(jwks=jwks)
    if store_url is None:
        return write_config(folder, port, idp, idp_ec, extra=extra)
    return pg_config(folder, port, idp, idp_ec, store_url, extra=extra)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory, idp: FakeIdP, idp_ec: FakeIdP) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("client-auth")
    port = free_port()
    server = Server(client_config(folder, port, idp, idp_ec), port)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def assertion(
    key_name: str,
    *,
    iss: str,
    sub: str,
    aud: Any,
    kid: str | None = "thumbprint",
    lifetime: int = 60,
    **claims: Any,
) -> str:
    """A client assertion made by an independent JWT library (PyJWT), as a stock client makes one."""
    key = load_key(key_name)
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": iss,
        "sub": sub,
        "aud": aud,
        "iat": now,
        "exp": now + lifetime,
        "jti": secrets.token_hex(12),
    }
    payload.update(claims)
    headers = {} if kid is None else {"kid": key.thumbprint() if kid == "thumbprint" else kid}
    return pyjwt.encode(payload, key.as_pem(private=True), algorithm="ES256", headers=headers)


def assertion_form(idp: FakeIdP, client_assertion: str, **params: Any) -> dict[str, Any]:
    return exchange_form(
        idp.token(),
        scope="customer.export",
        audience="https://crm.internal",
        client_assertion=client_assertion,
        client_assertion_type=JWT_BEARER,
        **params,
    )


def post(server: Server, form: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/token", data=form, headers=headers, timeout=10)


def assert_invalid_client(resp: httpx.Response) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.json() == {"error": "invalid_client", "error_description": "client authentication failed"}


def impersonation_attempts(server: Server, idp: FakeIdP) -> None:
    """Client "signer" tries to become "signer-b" every way an assertion allows."""
    token_endpoint = f"{server.url}/token"
    # iss = A (so A's keys are looked up), sub = B, client_id = B: the reported critical flaw.
    a_as_b = assertion("client_ec", iss="signer", sub="signer-b", aud=token_endpoint)
    assert_invalid_client(post(server, assertion_form(idp, a_as_b, client_id="signer-b")))
    # The same without client_id in the body.
    a_as_b = assertion("client_ec", iss="signer", sub="signer-b", aud=token_endpoint)
    assert_invalid_client(post(server, assertion_form(idp, a_as_b, client_id=None)))
    # iss = sub = B, signed with A's key under A's kid.
    b_by_a = assertion("client_ec", iss="signer-b", sub="signer-b", aud=token_endpoint)
    assert_invalid_client(post(server, assertion_form(idp, b_by_a, client_id="signer-b")))
    # iss = sub = B, signed with A's key under B's kid.
    b_kid = load_key("client_b_ec").thumbprint()
    b_by_a = assertion("client_ec", iss="signer-b", sub="signer-b", aud=token_endpoint, kid=b_kid)
    assert_invalid_client(post(server, assertion_form(idp, b_by_a, client_id="signer-b")))
    # A's genuine assertion sent with client_id = B.
    own = assertion("client_ec", iss="signer", sub="signer", aud=token_endpoint)
    assert_invalid_client(post(server, assertion_form(idp, own, client_id="signer-b")))
    # Each client still authenticates as itself.
    for name, key_name in (("signer", "client_ec"), ("signer-b", "client_b_ec")):
        genuine = assertion(key_name, iss=name, sub=name, aud=token_endpoint)
        resp = post(server, assertion_form(idp, genuine, client_id=name))
        assert resp.status_code == 200, resp.text
        claims = pyjwt.decode(resp.json()["access_token"], options={"verify_signature": False})
        assert claims["client_id"] == name


class TestImpersonation:
    def test_a_client_cannot_authenticate_as_another_with_its_own_key(
        self, auth_server: Server, idp: FakeIdP
    ) -> None:
        impersonation_attempts(auth_server, idp)

    @pytest.mark.postgres
    def test_a_client_cannot_authenticate_as_another_on_postgresql(
        self, tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP, pg_url: str
    ) -> None:
        port = free_port()
        server = Server(
            client_config(tmp_path, port, idp, idp_ec, pg_url), port, env={"EXCHANGE_KEK": new_kek()}
        )
        try:
            server.wait_ready()
            impersonation_attempts(server, idp)
        finally:
            server.stop()
