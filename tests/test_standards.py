"""Standards gaps stock clients trip over, each checked over real HTTP with a stock client or library:
RFC 8414 §2 metadata (authlib's validator), RFC 9396 §7 granted authorization_details in the token
response (authlib's OAuth2Client), RFC 6749 §3.3 a missing scope, RFC 9864 Ed25519 / EdDSA names."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from joserfc import jws
from joserfc.jwk import OKPKey

from schemas.config import Client
from tests.conftest import exchange_form
from tests.idp import FakeIdP
from tests.server import Server, free_port

ED_ISSUER = "https://idp-ed.example.com"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"


class EdIdP:
    """An identity provider signing with an Ed25519 key, publishing it under the name `published`."""

    def __init__(self, published: str | None) -> None:
        self.key = OKPKey.generate_key("Ed25519")
        self.kid = self.key.thumbprint()
        self.published = published

    def write_jwks(self, path: Path) -> Path:
        entry: dict[str, Any] = {**self.key.as_dict(private=False), "kid": self.kid, "use": "sig"}
        if self.published is not None:
            entry["alg"] = self.published
        path.write_bytes(msgspec.json.encode({"keys": [entry]}))
        return path

    def token(self, alg: str, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ED_ISSUER, "sub": "alice", "aud": "purpose-exchange", "iat": now, "exp": now + 300}
        payload.update(claims)
        return sign(self.key, {"alg": alg, "kid": self.kid, "typ": "JWT"}, payload)


def sign(key: OKPKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A compact JWS made by joserfc's algorithm object (its serializer warns about "EdDSA" by name)."""
    signing_input = b64(msgspec.json.encode(header)) + b"." + b64(msgspec.json.encode(claims))
    signature = jws.JWSRegistry.algorithms[header["alg"]].sign(signing_input, key)
    return (signing_input + b"." + b64(signature)).decode()


def b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


@pytest.fixture(scope="module")
def ed_idp() -> EdIdP:
    return EdIdP("EdDSA")


@pytest.fixture(scope="module")
def standards(tmp_path_factory: pytest.TempPathFactory, idp: FakeIdP, ed_idp: EdIdP) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("standards")
    port = free_port()
    config = folder / "exchange.toml"
    config.write_text(f'''
issuer = "http://127.0.0.1:{port}"
[store]
url = "sqlite:///exchange.db"
[[trusted_issuers]]
issuer = "{idp.issuer}"
jwks_file = "{idp.write_jwks(folder / "idp.json")}"
audiences = ["purpose-exchange"]
algorithms = ["RS256"]
[[trusted_issuers]]
issuer = "{ED_ISSUER}"
jwks_file = "{ed_idp.write_jwks(folder / "idp-ed.json")}"
audiences = ["purpose-exchange"]
algorithms = ["Ed25519"]
[[clients]]
client_id = "bank-web"
tokens_issued_to = ["purpose-exchange"]  # the fake IdPs audience their tokens to the exchange only
purposes = ["payments.approve"]
[purposes."payments.approve"]
audience = "https://payments.internal"
[purposes."payments.approve".authorization_details.payment]
payment_id = {{ type = "string", required = true }}
amount = {{ type = "number", required = true, maximum = 10000 }}
''')
    server = Server(config, port)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_metadata_passes_authlibs_rfc8414_validator(
    standards: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # the test server is plain http on loopback
    meta = httpx.get(f"{standards.url}/.well-known/oauth-authorization-server").json()
    # REQUIRED by RFC 8414 §2 and always present: we have no authorization endpoint, so it is empty.
    assert meta["response_types_supported"] == []
    assert meta["authorization_details_types_supported"] == ["payment"]
    checked = AuthorizationServerMetadata(meta)
    for key in checked.REGISTRY_KEYS:
        if key == "response_types_supported":
            continue  # authlib reads an empty array as a missing one; the member's presence is asserted above
        getattr(checked, f"validate_{key}")()
    with pytest.raises(ValueError, match="response_types_supported"):
        checked.validate()  # authlib's one objection, and only that one


def test_missing_scope_is_invalid_scope(standards: Server, idp: FakeIdP) -> None:
    resp = httpx.post(f"{standards.url}/token", data=exchange_form(idp.token(), scope=None))
    assert resp.status_code == 400
    assert resp.json() == {
        "error": "invalid_scope",
        "error_description": "scope is required: name exactly one purpose",
    }


# authlib's httpx integration warns that it prefers the httpx2 package; the client works the same.
@pytest.mark.filterwarnings("ignore:The httpx module is deprecated")
def test_stock_client_receives_the_granted_authorization_details(standards: Server, idp: FakeIdP) -> None:
    from authlib.integrations.httpx_client import OAuth2Client

    asked = [{"type": "payment", "payment_id": "p-1", "amount": 25.5}]
    with OAuth2Client("bank-web", token_endpoint_auth_method="none") as client:
        token = client.fetch_token(
            f"{standards.url}/token",
            grant_type=GRANT,
            subject_token=idp.token(),
            subject_token_type=ID_TOKEN,
            scope="payments.approve",
            authorization_details=json.dumps(asked),
        )
    assert token["authorization_details"] == asked
    assert token["token_type"] == "Bearer" and token["scope"] == "payments.approve"


def test_a_response_without_details_has_no_details_member(standards: Server, idp: FakeIdP) -> None:
    body = httpx.post(f"{standards.url}/token", data=exchange_form(idp.token())).json()
    assert "access_token" in body and "authorization_details" not in body


@pytest.mark.parametrize("header_alg", ["Ed25519", "EdDSA"])
def test_ed25519_and_eddsa_name_one_algorithm_for_an_ed25519_key(
    standards: Server, ed_idp: EdIdP, header_alg: str
) -> None:
    # The issuer publishes its key as "EdDSA" and is configured as "Ed25519" (RFC 9864 §2.2): tokens
    # under either name verify.
    resp = httpx.post(f"{standards.url}/token", data=exchange_form(ed_idp.token(header_alg)))
    assert resp.status_code == 200, resp.text


# Presents the fake providers' tokens, which are audienced to the exchange alone.
PRESENTER = Client(client_id="bank-web", tokens_issued_to=["purpose-exchange"])


def test_the_names_agree_the_other_way_round(tmp_path: Path) -> None:
    """A key published as "Ed25519", an issuer configured with "EdDSA", a header saying either."""
    import asyncio

    from exchange.trust import SubjectTrust
    from exchange.verify.jwks import key_source
    from schemas.config import TrustedIssuer

    idp = EdIdP("Ed25519")
    issuer = TrustedIssuer(issuer=ED_ISSUER, audiences=["purpose-exchange"], algorithms=["EdDSA"])
    keys = key_source(jwks_file=idp.write_jwks(tmp_path / "jwks.json"))
    trust = SubjectTrust([(issuer, keys)], max_token_bytes=8192)
    for alg in ("EdDSA", "Ed25519"):
        verified = asyncio.run(trust.validate(idp.token(alg), ID_TOKEN, presenter=PRESENTER))
        assert verified.claims["sub"] == "alice"


def test_an_ed448_key_is_not_an_ed25519_key(tmp_path: Path) -> None:
    import asyncio

    from exchange.errors import SubjectTokenInvalid
    from exchange.trust import SubjectTrust
    from exchange.verify.jwks import key_source
    from schemas.config import TrustedIssuer

    key = OKPKey.generate_key("Ed448")
    kid = key.thumbprint()
    jwks = {"keys": [{**key.as_dict(private=False), "kid": kid, "alg": "EdDSA", "use": "sig"}]}
    issuer = TrustedIssuer(issuer=ED_ISSUER, audiences=["purpose-exchange"], algorithms=["Ed25519"])
    trust = SubjectTrust([(issuer, key_source(jwks=jwks))], max_token_bytes=8192)
    now = int(time.time())
    claims = {"iss": ED_ISSUER, "sub": "alice", "aud": "purpose-exchange", "iat": now, "exp": now + 60}
    token = sign(key, {"alg": "EdDSA", "kid": kid}, claims)
    with pytest.raises(SubjectTokenInvalid) as refused:
        asyncio.run(trust.validate(token, ID_TOKEN, presenter=PRESENTER))
    assert refused.value.reason == "subject_token:algorithm_key_mismatch"
