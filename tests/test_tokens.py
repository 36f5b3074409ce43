"""Minting: every signing algorithm yields tokens that independent code verifies with the published JWKS."""

from __future__ import annotations

import base64
import os
import time
import warnings
from pathlib import Path

import jwt as pyjwt
import msgspec
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet

from exchange import lifecycle
from exchange.keys import KeyEncryption, KeyRing
from exchange.store import open_store
from exchange.tokens import Minter
from exchange.verify import PurposeTokenVerifier, StaticJWKS
from schemas.config import StoreConfig

ISSUER = "https://exchange.example.com"


@pytest.mark.parametrize("alg", ["ES256", "Ed25519", "EdDSA", "RS256", "PS256"])
async def test_each_algorithm_signs_verifiable_purpose_tokens(tmp_path: Path, alg: str) -> None:
    store = await open_store(StoreConfig(url=f"sqlite:///{tmp_path / 'x.db'}"))
    try:
        ring = KeyRing(store, KeyEncryption(os.urandom(32)), alg)
        await ring.ensure_active()
        minter = Minter(ring, ISSUER)
        now = time.time()
        subject = {
            "sub": "alice",
            "exp": int(now) + 600,
            "amr": ["mfa"],
            "acr": "urn:acr:2fa",
            "auth_time": 1,
        }
        claims = minter.claims(
            subject=subject,
            subject_issuer="https://idp.example.com",
            audience="https://payments.internal",
            client_id="bank-web",
            purpose="payments.approve",
            ttl=60,
            now=now,
        )
        token = minter.sign(claims)
        jwks = msgspec.json.decode(ring.jwks_bytes)

        with warnings.catch_warnings():
            # joserfc warns on every "EdDSA" (RFC 9864 deprecates the name); that label is the point here.
            warnings.simplefilter("ignore", SecurityWarning)
            decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=[alg])
        assert decoded.header == {"alg": alg, "typ": "at+jwt", "kid": ring.active.kid}
        if alg != "Ed25519":  # PyJWT knows Ed25519 only by its older name, EdDSA
            # PyJWT reads the same token (it checks exp and aud itself).
            public = pyjwt.PyJWK(jwks["keys"][0]).key
            by_pyjwt = pyjwt.decode(token, public, algorithms=[alg], audience="https://payments.internal")
            assert by_pyjwt == decoded.claims
        if alg == "ES256":
            # RFC 7518 §3.4: the 32-byte R then the 32-byte S (not DER), checked with cryptography alone.
            signing_input, _, segment = token.rpartition(".")
            signature = base64.urlsafe_b64decode(segment + "==")
            assert len(signature) == 64
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            public.verify(encode_dss_signature(r, s), signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        assert decoded.claims["scope"] == "payments.approve" and decoded.claims["exp"] == int(now) + 60

        verifier = PurposeTokenVerifier(
            issuer=ISSUER, audience="https://payments.internal", jwks=StaticJWKS(jwks), algorithms=[alg]
        )
        verified = verifier.verify(token, purpose="payments.approve")
        assert verified.sub == "alice" and verified.client_id == "bank-web"
        assert verified.subject_issuer == "https://idp.example.com"
        assert verified.to_dict()["sub_id"] == {
            "format": "iss_sub",
            "iss": "https://idp.example.com",
            "sub": "alice",
        }
    finally:
        await store.close()


async def test_rotation_changes_the_signing_key_and_keeps_the_old_one_published(tmp_path: Path) -> None:
    store = await open_store(StoreConfig(url=f"sqlite:///{tmp_path / 'x.db'}"))
    try:
        ring = KeyRing(store, KeyEncryption(os.urandom(32)), "ES256")
        await ring.ensure_active()
        minter = Minter(ring, ISSUER)
        subject = {"sub": "alice", "exp": int(time.time()) + 600}

        def mint() -> str:
            return minter.sign(
                minter.claims(
                    subject=subject,
                    subject_issuer="https://idp.example.com",
                    audience="a",
                    client_id="c",
                    purpose="p",
                    ttl=60,
                    now=time.time(),
                )
            )

        old_token, old_kid = mint(), ring.active.kid
        start = time.time()
        [staged] = await ring.change(lambda keys: lifecycle.stage(keys, start, ring.new_key(start)))
        new_kid = staged.key.kid  # type: ignore[union-attr]
        assert new_kid != old_kid and ring.active.kid == old_kid  # staged: published, not signing yet
        await ring.advance(start + ring.timing.publish_before_signing)
        assert ring.active.kid == new_kid
        new_token = mint()
        jwks = StaticJWKS(msgspec.json.decode(ring.jwks_bytes))
        assert jwks.kids == {old_kid, new_kid}
        for token, kid in ((old_token, old_kid), (new_token, new_kid)):
            assert jwt.decode(token, await jwks.get_key(kid), algorithms=["ES256"]).header["kid"] == kid
    finally:
        await store.close()


async def test_private_keys_are_encrypted_at_rest_and_bound_to_their_kid(tmp_path: Path) -> None:
    store = await open_store(StoreConfig(url=f"sqlite:///{tmp_path / 'x.db'}"))
    try:
        kek = KeyEncryption(os.urandom(32))
        ring = KeyRing(store, kek, "ES256")
        await ring.ensure_active()
        (stored,) = await store.list_keys()
        assert b'"d"' not in stored.private_jwk  # ciphertext, not a JWK
        assert b'"d"' in kek.open(stored.kid, stored.private_jwk)
        with pytest.raises(Exception, match="cannot decrypt"):
            kek.open("another-kid", stored.private_jwk)
        with pytest.raises(Exception, match="cannot decrypt"):
            KeyEncryption(os.urandom(32)).open(stored.kid, stored.private_jwk)
    finally:
        await store.close()
