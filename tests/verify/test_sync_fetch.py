"""`verify()` without an event loop fetches and refreshes keys itself, under the policy `averify` has.

The keys come from a real JWKS server on 127.0.0.1; time is a fake monotonic clock for the cache, so
freshness, cooldown and staleness are tested without sleeping.
"""

from __future__ import annotations

import threading

import pytest
from joserfc.jwk import Key

from exchange.verify import JWKSCache, PurposeTokenVerifier, VerificationError
from tests.verify.conftest import AUDIENCE, ISSUER, NOW, PURPOSE, FakeClock, JWKSServer, mint


def verifier_for(cache: JWKSCache) -> PurposeTokenVerifier:
    return PurposeTokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=cache, clock=lambda: NOW)


def reason(verifier: PurposeTokenVerifier, token: str) -> str:
    with pytest.raises(VerificationError) as caught:
        verifier.verify(token)
    return caught.value.reason


class TestFirstUse:
    def test_verify_with_a_jwks_uri_fetches_on_the_first_call(
        self, jwks_server: JWKSServer, ec_key: Key
    ) -> None:
        # As a new user would write it: no refresh_keys(), no event loop.
        jwks_server.publish(ec_key)
        verifier = PurposeTokenVerifier(
            issuer=ISSUER, audience=AUDIENCE, jwks_uri=jwks_server.url, clock=lambda: NOW
        )
        assert verifier.verify(mint(ec_key), purpose=PURPOSE).sub == "alice"
        assert verifier.verify(mint(ec_key)).sub == "alice"
        assert jwks_server.fetches == 1

    def test_an_unreachable_jwks_is_keys_unavailable(self, ec_key: Key, clock: FakeClock) -> None:
        cache = JWKSCache("http://127.0.0.1:9/jwks.json", timeout=0.5, clock=clock)
        assert reason(verifier_for(cache), mint(ec_key)) == "keys_unavailable"
        assert cache.last_error is not None


class TestPolicy:
    def test_an_unknown_kid_refreshes_at_most_once_per_cooldown(
        self, jwks_server: JWKSServer, ec_key: Key, other_ec_key: Key, clock: FakeClock
    ) -> None:
        jwks_server.publish(ec_key)
        cache = JWKSCache(jwks_server.url, cooldown=30, clock=clock)
        verifier = verifier_for(cache)
        assert verifier.verify(mint(ec_key)).sub == "alice"
        for _ in range(5):
            assert reason(verifier, mint(other_ec_key)) == "unknown_key"
        assert jwks_server.fetches == 1  # within the cooldown of the first fetch: none
        clock.advance(31)
        for _ in range(5):
            assert reason(verifier, mint(other_ec_key)) == "unknown_key"
        assert jwks_server.fetches == 2  # one refresh for the unknown kid, then the cooldown again
        jwks_server.publish(ec_key, other_ec_key)  # a rotation
        clock.advance(31)
        assert verifier.verify(mint(other_ec_key)).sub == "alice"
        assert jwks_server.fetches == 3

    def test_a_stale_set_serves_until_max_stale_then_fails_closed(
        self, jwks_server: JWKSServer, ec_key: Key, clock: FakeClock
    ) -> None:
        jwks_server.publish(ec_key, max_age=60)
        cache = JWKSCache(jwks_server.url, min_ttl=60, cooldown=30, max_stale=600, clock=clock)
        verifier = verifier_for(cache)
        assert verifier.verify(mint(ec_key)).sub == "alice"
        jwks_server.status = 500
        clock.advance(120)  # stale: the refresh fails, the last good set still serves
        assert verifier.verify(mint(ec_key)).sub == "alice"
        assert cache.last_error == "JWKSError: HTTP 500"
        clock.advance(600)  # past max_stale: fails closed
        assert reason(verifier, mint(ec_key)) == "keys_unavailable"

    def test_an_oversized_jwks_is_refused(
        self, jwks_server: JWKSServer, ec_key: Key, clock: FakeClock
    ) -> None:
        jwks_server.publish(ec_key)
        jwks_server.body += b" " * 5000
        jwks_server.headers = {}
        cache = JWKSCache(jwks_server.url, max_bytes=1024, clock=clock)
        assert reason(verifier_for(cache), mint(ec_key)) == "keys_unavailable"
        assert "exceeds the cap" in (cache.last_error or "")


class TestThreads:
    def test_threads_share_one_fetch(self, jwks_server: JWKSServer, ec_key: Key, clock: FakeClock) -> None:
        jwks_server.publish(ec_key)
        jwks_server.delay = 0.3  # every thread arrives while the first fetch is in flight
        verifier = verifier_for(JWKSCache(jwks_server.url, clock=clock))
        token = mint(ec_key)
        results: list[str] = []
        start = threading.Barrier(8)

        def work() -> None:
            start.wait()
            results.append(verifier.verify(token).sub)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert results == ["alice"] * 8
        assert jwks_server.fetches == 1
