"""The key ring through the lifecycle on a real store: an algorithm change, and failing closed."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import msgspec
import pytest

from exchange.errors import ConfigError, TemporarilyUnavailable
from exchange.keys import KeyEncryption, KeyRing
from exchange.store import Store, open_store
from exchange.tokens import Minter
from exchange.verify import PurposeTokenVerifier, StaticJWKS
from schemas.config import StoreConfig

ISSUER = "https://exchange.example.com"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(StoreConfig(url=f"sqlite:///{tmp_path / 'keys.db'}"))
    try:
        yield s
    finally:
        await s.close()


def mint(ring: KeyRing) -> str:
    minter = Minter(ring, ISSUER)
    now = time.time()
    return minter.sign(
        minter.claims(
            subject={"sub": "alice", "exp": int(now) + 600},
            subject_issuer="https://idp.example.com",
            audience="https://payments.internal",
            client_id="bank-web",
            purpose="payments.approve",
            ttl=60,
            now=now,
        )
    )


async def test_a_changed_algorithm_rotates_through_the_lifecycle_and_pyjwt_verifies_eddsa(
    store: Store,
) -> None:
    kek = KeyEncryption(os.urandom(32))
    before = KeyRing(store, kek, "ES256")
    await before.ensure_active()
    old_token, old_kid = mint(before), before.active.kid

    after = KeyRing(store, kek, "EdDSA")  # the replica restarted with signing.algorithm = "EdDSA"
    start = time.time()
    await after.ensure_active(start)
    assert after.active.kid == old_kid  # staged, not signing: verifiers have not fetched it yet
    published = msgspec.json.decode(after.jwks_bytes)["keys"]
    assert sorted(k["alg"] for k in published) == ["ES256", "EdDSA"]

    await after.advance(start + after.timing.publish_before_signing)
    assert after.active.alg == "EdDSA" and after.active.kid != old_kid
    new_token = mint(after)
    assert pyjwt.get_unverified_header(new_token)["alg"] == "EdDSA"

    # During the overlap both verify, with the JWKS the exchange publishes now.
    jwks = msgspec.json.decode(after.jwks_bytes)
    audience = "https://payments.internal"
    verifier = PurposeTokenVerifier(issuer=ISSUER, audience=audience, jwks=StaticJWKS(jwks))
    for token in (old_token, new_token):
        assert verifier.verify(token).sub == "alice"
    [ed] = [k for k in jwks["keys"] if k["alg"] == "EdDSA"]
    claims = pyjwt.decode(
        new_token,
        pyjwt.PyJWK(ed).key,
        algorithms=["EdDSA"],
        audience="https://payments.internal",
        issuer=ISSUER,
    )
    assert claims["sub"] == "alice"


async def test_a_ring_whose_kek_does_not_open_the_current_key_fails_closed(store: Store) -> None:
    await KeyRing(store, KeyEncryption(os.urandom(32)), "ES256").ensure_active()
    stranger = KeyRing(store, KeyEncryption(os.urandom(32)), "ES256")

    with pytest.raises(ConfigError, match="cannot decrypt it with this KEK"):
        await stranger.ensure_active()  # at start-up: one sentence, no service

    await stranger.refresh()  # at run time (another process changed keys): publish, but never sign
    assert stranger.problem is not None and "cannot decrypt it with this KEK" in stranger.problem
    assert len(msgspec.json.decode(stranger.jwks_bytes)["keys"]) == 1
    with pytest.raises(TemporarilyUnavailable):
        _ = stranger.active
    # And its lifecycle step adds no key that the others could not open.
    before = await store.list_keys()
    with pytest.raises(ConfigError):
        await stranger.change(lambda keys: [])  # proving the KEK comes first, even for nothing
    assert await store.list_keys() == before


async def test_a_reload_that_lengthens_a_ttl_keeps_retiring_keys_published_longer(tmp_path: Path) -> None:
    from exchange import reload
    from exchange.app import build_runtime
    from exchange.config import parse_settings

    def settings(ttl: int) -> Any:
        return parse_settings(
            {
                "issuer": "https://x.example",
                "store": {"url": f"sqlite:///{tmp_path / 'r.db'}"},
                "purposes": {"p": {"audience": "https://a", "ttl": ttl}},
            }
        )

    runtime = await build_runtime(settings(60))
    try:
        assert runtime.keyring.timing.publish_after_signing == 60 + 120 + 300
        runtime.install(reload.build(settings(900), runtime.store, previous=runtime.configured))
        assert runtime.keyring.timing.publish_after_signing == 900 + 120 + 300
    finally:
        await runtime.store.close()


async def test_scheduled_rotation_stages_once_per_period_and_logs_key_rotated(store: Store) -> None:
    from structlog.testing import capture_logs

    from exchange.lifecycle import Timing

    ring = KeyRing(store, KeyEncryption(os.urandom(32)), "ES256", timing=Timing(rotate_every=86400))
    start = 1_900_000_000.0
    await ring.ensure_active(start)
    first = ring.active.kid
    assert await ring.advance(start + 86399) == []
    with capture_logs() as logs:
        [staged] = await ring.advance(start + 86400)
        assert await ring.advance(start + 86401) == []  # staged already: the next step changes nothing
    assert [(e["event"], e["change"], e["state"]) for e in logs] == [("key_rotated", "created", "next")]
    assert ring.active.kid == first
    await ring.advance(start + 86400 + ring.timing.publish_before_signing)
    assert ring.active.kid == staged.key.kid  # type: ignore[union-attr]
