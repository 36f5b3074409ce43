"""No single-bit change to a valid token is accepted: every bit of a genuine subject token, client
assertion and purpose token is flipped in turn (exhaustively, not sampled) and each result refused,
while the genuine token still passes. Covers base64url malleability (unused trailing bits), header and
claims edits, and signature edits alike. Random bodies through HTTP: tests/test_attacks.py."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.clients import ClientAuthenticator, presented_credentials
from exchange.errors import InvalidClient, SubjectTokenInvalid
from exchange.store import open_store
from exchange.trust import SubjectTrust
from exchange.verify import PurposeTokenVerifier, StaticJWKS, VerificationError
from schemas.config import Client, StoreConfig, TrustedIssuer
from schemas.wire import CLIENT_ASSERTION_TYPE_JWT, TOKEN_TYPE_ID_TOKEN, TokenRequest
from tests import forge
from tests.idp import FakeIdP, load_key
from tests.verify.conftest import AUDIENCE, ISSUER, NOW, base_claims

ENDPOINT = "https://exchange.test/token"


def flips(token: str) -> list[str]:
    """Every token one bit away (a flipped high bit makes a non-ASCII character: refused too)."""
    raw = token.encode()
    return [
        (raw[:i] + bytes([raw[i] ^ (1 << bit)]) + raw[i + 1 :]).decode("latin-1")
        for i in range(len(raw))
        for bit in range(8)
    ]


async def test_every_bit_of_a_subject_token_matters() -> None:
    idp = FakeIdP("https://idp.example.com", "idp_ec", "ES256")
    trust = SubjectTrust(
        [
            (
                TrustedIssuer(issuer=idp.issuer, audiences=["purpose-exchange"], algorithms=["ES256"]),
                StaticJWKS(idp.jwks()),
            )
        ],
        max_token_bytes=8192,
    )
    presenter = Client(client_id="bank-web")
    genuine = idp.token(azp="bank-web")
    assert (await trust.validate(genuine, TOKEN_TYPE_ID_TOKEN, presenter=presenter)).claims["sub"] == "alice"
    accepted = []
    for token in flips(genuine):
        try:
            await trust.validate(token, TOKEN_TYPE_ID_TOKEN, presenter=presenter)
        except SubjectTokenInvalid:
            continue
        accepted.append(token)
    assert accepted == []


async def test_every_bit_of_a_client_assertion_matters(tmp_path: Path) -> None:
    key = load_key("client_ec")
    jwks = tmp_path / "client-jwks.json"
    FakeIdP("signer", "client_ec", "ES256").write_jwks(jwks)
    store = await open_store(StoreConfig(url=f"sqlite:///{tmp_path / 'x.db'}"))
    try:
        clients = ClientAuthenticator(
            [Client(client_id="signer", auth_method="private_key_jwt", jwks_file=str(jwks))],
            token_endpoint=ENDPOINT,
            issuer="https://exchange.test",
            store=store,
        )
        now = int(time.time())
        claims = {"iss": "signer", "sub": "signer", "aud": ENDPOINT, "iat": now, "exp": now + 60}
        header = {"alg": "ES256", "kid": key.thumbprint()}

        async def authenticate(assertion: str) -> str:
            request = TokenRequest(
                client_assertion=assertion, client_assertion_type=CLIENT_ASSERTION_TYPE_JWT
            )
            return (await clients.authenticate(presented_credentials(request, None), request)).client_id

        # Each flip gets a fresh jti, so a refusal is never just the replay guard.
        genuine = forge.sign(key, header, {**claims, "jti": "genuine"})
        assert await authenticate(genuine) == "signer"
        accepted = []
        for flipped in flips(forge.sign(key, header, {**claims, "jti": secrets.token_hex(8)})):
            try:
                await authenticate(flipped)
            except InvalidClient:
                continue
            accepted.append(flipped)
        assert accepted == []
        clients.close()
    finally:
        await store.close()


def test_every_bit_of_a_purpose_token_matters() -> None:
    verifier = PurposeTokenVerifier(
        issuer=ISSUER, audience=AUDIENCE, jwks={"keys": [_KEY.as_dict(private=False)]}
    )
    sub_id = {"format": "iss_sub", "iss": "https://idp", "sub": "alice"}
    genuine = forge.sign(_KEY, {"alg": "ES256", "typ": "at+jwt", "kid": _KEY.kid}, base_claims(sub_id=sub_id))
    assert verifier.verify(genuine, now=NOW).subject_issuer == "https://idp"
    accepted = []
    for token in flips(genuine):
        try:
            verifier.verify(token, now=NOW)
        except VerificationError:
            continue
        accepted.append(token)
    assert accepted == []


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0))
def test_any_byte_change_of_a_purpose_token_is_refused(replacement: bytes, where: int) -> None:
    """Beyond single bits: any splice of arbitrary bytes into a genuine token is refused or identical."""
    key, genuine = _KEY, _GENUINE
    i = where % len(genuine)
    token = (genuine.encode()[:i] + replacement + genuine.encode()[i + len(replacement) :]).decode("latin-1")
    verifier = PurposeTokenVerifier(
        issuer=ISSUER, audience=AUDIENCE, jwks={"keys": [key.as_dict(private=False)]}
    )
    if token == genuine:
        return
    with pytest.raises(VerificationError):
        verifier.verify(token, now=NOW)


_KEY = load_key("idp_ec")
_KEY.ensure_kid()
_GENUINE = forge.sign(_KEY, {"alg": "ES256", "typ": "at+jwt", "kid": _KEY.kid}, base_claims())
