"""JWKSCache against a real HTTP server on 127.0.0.1, with an injected clock (no sleeps)."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import Key, OctKey, RSAKey

from exchange.verify import JWKSCache, PurposeTokenVerifier, StaticJWKS, VerificationError, parse_jwks
from exchange.verify.jwks import JWKSError, UnknownKid
from tests.verify.conftest import AUDIENCE, ISSUER, NOW, FakeClock, JWKSServer, mint, public_jwks


def cache_for(server: JWKSServer, clock: FakeClock, **options: Any) -> JWKSCache:
    settings: dict[str, Any] = {
        "min_ttl": 10,
        "max_ttl": 3600,
        "cooldown": 30,
        "max_stale": 600,
        "timeout": 2,
    }
    settings.update(options)
    return JWKSCache(server.url, clock=clock, **settings)


async def reason_of(cache: JWKSCache, kid: str) -> str:
    with pytest.raises(VerificationError) as caught:
        await cache.get_key(kid)
    return caught.value.reason


class TestFreshness:
    async def test_first_use_fetches_then_serves_from_cache(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key
    ) -> None:
        jwks_server.publish(ec_key, max_age=300)
        cache = cache_for(jwks_server, clock)
        assert cache.get_cached_key(ec_key.kid) is None  # nothing before the first fetch
        assert (await cache.get_key(ec_key.kid)).kid == ec_key.kid
        assert (await cache.get_key(ec_key.kid)).kid == ec_key.kid
        assert cache.get_cached_key(ec_key.kid) is not None
        assert jwks_server.fetches == 1

    async def test_max_age_is_honoured(self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key) -> None:
        jwks_server.publish(ec_key, max_age=120)
        cache = cache_for(jwks_server, clock)
        await cache.get_key(ec_key.kid)
        clock.advance(119)
        await cache.get_key(ec_key.kid)
        assert jwks_server.fetches == 1
        clock.advance(1)
        await cache.get_key(ec_key.kid)
        assert jwks_server.fetches == 2

    @pytest.mark.parametrize(("max_age", "expected_ttl"), [(1, 10), (999_999, 3600)])
    async def test_max_age_is_clamped_to_bounds(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key, max_age: int, expected_ttl: int
    ) -> None:
        jwks_server.publish(ec_key, max_age=max_age)
        cache = cache_for(jwks_server, clock)
        await cache.get_key(ec_key.kid)
        clock.advance(expected_ttl - 0.5)
        await cache.get_key(ec_key.kid)
        assert jwks_server.fetches == 1
        clock.advance(0.5)
        await cache.get_key(ec_key.kid)
        assert jwks_server.fetches == 2

    async def test_no_cache_control_uses_the_default_ttl(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key
    ) -> None:
        jwks_server.publish(ec_key, max_age=None)
        cache = cache_for(jwks_server, clock, default_ttl=50)
        await cache.get_key(ec_key.kid)
        clock.advance(49)
        await cache.get_key(ec_key.kid)
        assert jwks_server.fetches == 1
        clock.advance(1)
        await cache.get_key(ec_key.kid)
        assert jwks_server.fetches == 2


class TestUnknownKid:
    async def test_rotated_key_is_found_by_refreshing(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key, rsa_key: Key
    ) -> None:
        jwks_server.publish(ec_key)
        cache = cache_for(jwks_server, clock)
        await cache.get_key(ec_key.kid)
        clock.advance(31)  # past the cooldown of the first fetch
        jwks_server.publish(ec_key, rsa_key)
        assert (await cache.get_key(rsa_key.kid)).kid == rsa_key.kid
        assert jwks_server.fetches == 2

    async def test_unknown_kids_refresh_at_most_once_per_cooldown(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key
    ) -> None:
        jwks_server.publish(ec_key)
        cache = cache_for(jwks_server, clock, cooldown=30)
        await cache.get_key(ec_key.kid)
        clock.advance(31)
        for attempt in range(5):
            assert await reason_of(cache, f"made-up-{attempt}") == "unknown_key"
        assert jwks_server.fetches == 2  # the first fetch, then one refresh for the whole stream
        clock.advance(30)
        assert await reason_of(cache, "made-up-again") == "unknown_key"
        assert jwks_server.fetches == 3

    async def test_a_refetch_suppressed_by_the_cooldown_is_told_apart_and_counted(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key
    ) -> None:
        jwks_server.publish(ec_key)
        cache = cache_for(jwks_server, clock, cooldown=30)
        await cache.get_key(ec_key.kid)
        with pytest.raises(UnknownKid) as looked:
            await cache.get_key("made-up-1")  # within the cooldown of the first fetch: not looked for
        assert looked.value.refetch_suppressed and looked.value.reason == "unknown_key"
        assert cache.state().refetches_suppressed == 1
        clock.advance(31)
        with pytest.raises(UnknownKid) as fetched:
            await cache.get_key("made-up-2")  # fetched again, and still not there
        assert not fetched.value.refetch_suppressed
        assert cache.state().refetches_suppressed == 1 and jwks_server.fetches == 2

    async def test_state_says_fresh_stale_then_unusable_with_counts(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key
    ) -> None:
        jwks_server.publish(ec_key, max_age=60)
        cache = cache_for(jwks_server, clock, max_stale=600)
        assert cache.state().state == "unusable" and cache.state().last_success_age is None
        assert cache.refresh_due()  # never fetched
        await cache.get_key(ec_key.kid)
        fresh = cache.state()
        assert (fresh.state, fresh.kids, fresh.fetches, fresh.failures) == ("fresh", 1, 1, 0)
        assert not cache.refresh_due()
        clock.advance(55)
        assert cache.refresh_due()  # the last tenth of its freshness: refresh ahead of time
        jwks_server.status = 500
        clock.advance(10)
        await cache.refresh()
        stale = cache.state()
        assert (stale.state, stale.failures) == ("stale", 1) and "HTTP 500" in (stale.last_error or "")
        assert stale.last_success_age == pytest.approx(65)
        assert not cache.refresh_due()  # within the cooldown of that failure
        clock.advance(600)
        assert cache.state().state == "unusable" and cache.state().kids == 0

    async def test_burst_of_unknown_kids_is_one_fetch(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key, rsa_key: Key
    ) -> None:
        jwks_server.publish(ec_key)
        cache = cache_for(jwks_server, clock)
        await cache.get_key(ec_key.kid)
        clock.advance(31)
        jwks_server.publish(ec_key, rsa_key)
        jwks_server.delay = 0.05  # the fetch is in flight while the whole burst arrives
        kids = [rsa_key.kid] * 10 + [f"made-up-{n}" for n in range(10)]
        results = await asyncio.gather(*(cache.get_key(kid) for kid in kids), return_exceptions=True)
        assert jwks_server.fetches == 2
        assert all(isinstance(result, Key) for result in results[:10])
        assert all(
            isinstance(result, VerificationError) and result.reason == "unknown_key"
            for result in results[10:]
        )

    async def test_cold_burst_is_one_fetch(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key
    ) -> None:
        jwks_server.publish(ec_key)
        jwks_server.delay = 0.05
        cache = cache_for(jwks_server, clock)
        keys = await asyncio.gather(*(cache.get_key(ec_key.kid) for _ in range(20)))
        assert {key.kid for key in keys} == {ec_key.kid}
        assert jwks_server.fetches == 1


class TestFailures:
    async def test_stale_set_serves_while_the_issuer_is_down(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key
    ) -> None:
        jwks_server.publish(ec_key, max_age=60)
        cache = cache_for(jwks_server, clock, max_stale=600, cooldown=30)
        await cache.get_key(ec_key.kid)
        jwks_server.status = 503
        clock.advance(60)  # stale now
        assert (await cache.get_key(ec_key.kid)).kid == ec_key.kid
        assert jwks_server.fetches == 2
        assert cache.last_error is not None and "503" in cache.last_error
        clock.advance(10)  # within the cooldown: no hammering of a failing issuer
        await cache.get_key(ec_key.kid)
        assert jwks_server.fetches == 2

    async def test_fails_closed_after_max_stale(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key
    ) -> None:
        jwks_server.publish(ec_key, max_age=60)
        cache = cache_for(jwks_server, clock, max_stale=600)
        await cache.get_key(ec_key.kid)
        jwks_server.status = 500
        clock.advance(60 + 599)
        assert (await cache.get_key(ec_key.kid)).kid == ec_key.kid
        clock.advance(1)
        assert await reason_of(cache, ec_key.kid) == "keys_unavailable"
        assert cache.get_cached_key(ec_key.kid) is None
        # ...and recovers as soon as the issuer answers again.
        jwks_server.publish(ec_key)
        clock.advance(30)
        assert (await cache.get_key(ec_key.kid)).kid == ec_key.kid

    async def test_invalid_json_keeps_the_last_good_set(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key
    ) -> None:
        jwks_server.publish(ec_key, max_age=60)
        cache = cache_for(jwks_server, clock)
        await cache.get_key(ec_key.kid)
        jwks_server.body = b"<html>oops</html>"
        clock.advance(60)
        assert (await cache.get_key(ec_key.kid)).kid == ec_key.kid
        assert cache.last_error is not None and "JWKSError" in cache.last_error

    async def test_response_over_the_size_cap_is_refused(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key
    ) -> None:
        jwks_server.publish(ec_key)
        cache = cache_for(jwks_server, clock, max_bytes=64)
        assert await reason_of(cache, ec_key.kid) == "keys_unavailable"
        assert cache.last_error is not None and "cap" in cache.last_error

    async def test_compressed_response_is_capped_after_decompression(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key
    ) -> None:
        padded = {**public_jwks(ec_key), "padding": "x" * 100_000}
        jwks_server.body = gzip.compress(json.dumps(padded).encode())
        jwks_server.headers = {"Content-Encoding": "gzip"}
        assert len(jwks_server.body) < 1000
        cache = cache_for(jwks_server, clock, max_bytes=50_000)
        assert await reason_of(cache, ec_key.kid) == "keys_unavailable"
        assert cache.last_error is not None and "cap" in cache.last_error

    async def test_too_many_keys_are_refused(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key, rsa_key: Key, ed_key: Key
    ) -> None:
        jwks_server.publish(ec_key, rsa_key, ed_key)
        cache = cache_for(jwks_server, clock, max_keys=2)
        assert await reason_of(cache, ec_key.kid) == "keys_unavailable"
        assert cache.last_error is not None and "cap of 2" in cache.last_error

    async def test_redirects_are_not_followed(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key
    ) -> None:
        jwks_server.status = 302
        jwks_server.headers = {"Location": "http://evil.test/jwks.json"}
        cache = cache_for(jwks_server, clock)
        assert await reason_of(cache, ec_key.kid) == "keys_unavailable"
        assert cache.last_error is not None and "302" in cache.last_error

    async def test_slow_issuer_hits_the_timeout(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key
    ) -> None:
        jwks_server.publish(ec_key)
        jwks_server.delay = 0.5
        cache = cache_for(jwks_server, clock, timeout=0.1)
        assert await reason_of(cache, ec_key.kid) == "keys_unavailable"
        assert cache.last_error is not None and "Timeout" in cache.last_error


class TestURIPolicy:
    @pytest.mark.parametrize(
        "uri",
        ["https://issuer.test/jwks", "http://127.0.0.1:8080/jwks", "http://localhost/jwks", "http://[::1]/j"],
    )
    def test_https_or_loopback_http_is_accepted(self, uri: str) -> None:
        assert JWKSCache(uri).uri == uri

    @pytest.mark.parametrize(
        "uri", ["http://issuer.test/jwks", "http://10.0.0.1/jwks", "file:///etc/jwks", "jwks"]
    )
    def test_plain_http_elsewhere_is_refused(self, uri: str) -> None:
        with pytest.raises(ValueError):
            JWKSCache(uri)

    def test_insecure_http_is_an_explicit_opt_in(self) -> None:
        assert (
            JWKSCache("http://exchange:8080/jwks", allow_insecure_http=True).uri
            == "http://exchange:8080/jwks"
        )
        with pytest.raises(ValueError):
            JWKSCache("ftp://exchange/jwks", allow_insecure_http=True)


class TestKeyFiltering:
    def test_symmetric_private_and_encryption_keys_are_dropped(self, ec_key: Key, rsa_key: Key) -> None:
        oct_key = OctKey.generate_key(256, auto_kid=True)
        document = {
            "keys": [
                oct_key.as_dict(),
                rsa_key.as_dict(private=True),
                {**ec_key.as_dict(private=False), "use": "enc", "kid": "enc-key"},
                ec_key.as_dict(private=False),
            ]
        }
        assert set(parse_jwks(document)) == {ec_key.kid}

    def test_short_rsa_keys_are_dropped(self, ec_key: Key) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa
        from joserfc.errors import SecurityWarning

        with pytest.warns(SecurityWarning):
            short = RSAKey.import_key(rsa.generate_private_key(65537, 1024).public_key())
        short.ensure_kid()
        # joserfc warns on import and would still use the key; parse_jwks drops it before import.
        assert set(parse_jwks(public_jwks(short, ec_key))) == {ec_key.kid}

    def test_set_without_usable_keys_is_an_error(self) -> None:
        with pytest.raises(JWKSError):
            parse_jwks({"keys": [{"kty": "PQ-unknown", "kid": "x"}]})

    def test_key_without_kid_is_named_by_its_thumbprint(self, ec_key: Key) -> None:
        data = ec_key.as_dict(private=False)
        del data["kid"]
        assert set(parse_jwks({"keys": [data]})) == {ec_key.thumbprint()}


class TestStaticJWKS:
    async def test_file_source_serves_its_keys(self, tmp_path: Path, ec_key: Key) -> None:
        path = tmp_path / "jwks.json"
        path.write_text(json.dumps(public_jwks(ec_key)))
        keys = StaticJWKS.from_file(path)
        assert (await keys.get_key(ec_key.kid)).kid == ec_key.kid
        verifier = PurposeTokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=keys)
        assert verifier.verify(mint(ec_key), now=NOW).sub == "alice"
        with pytest.raises(VerificationError) as caught:
            await keys.get_key("other")
        assert caught.value.reason == "unknown_key"

    def test_bad_file_names_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "broken.json"
        path.write_text("{not json")
        with pytest.raises(ValueError, match=r"broken\.json"):
            StaticJWKS.from_file(path)


class TestVerifierWithCache:
    async def test_sync_and_async_verify_share_one_cache(
        self, jwks_server: JWKSServer, ec_key: Key, rsa_key: Key
    ) -> None:
        jwks_server.publish(ec_key)
        verifier = PurposeTokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks_uri=jwks_server.url)
        assert verifier.verify(mint(ec_key), now=NOW).sub == "alice"  # sync fetches on first use
        assert (await verifier.averify(mint(ec_key), now=NOW)).sub == "alice"
        assert jwks_server.fetches == 1
        with pytest.raises(VerificationError) as caught:
            await verifier.averify(mint(rsa_key, alg="RS256"), now=NOW)
        assert caught.value.reason == "unknown_key"

    async def test_key_removed_from_the_published_jwks_stops_verifying(
        self, jwks_server: JWKSServer, clock: FakeClock, ec_key: Key, rsa_key: Key
    ) -> None:
        jwks_server.publish(ec_key, rsa_key, max_age=60)
        keys = cache_for(jwks_server, clock)
        verifier = PurposeTokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=keys)
        token = mint(ec_key)
        assert (await verifier.averify(token, now=NOW)).sub == "alice"
        jwks_server.publish(rsa_key, max_age=60)  # the exchange retired ec_key
        assert (await verifier.averify(token, now=NOW)).sub == "alice"  # still cached: fresh for 60 s
        clock.advance(60)
        with pytest.raises(VerificationError) as caught:
            await verifier.averify(token, now=NOW)
        assert caught.value.reason == "unknown_key"
        assert jwks_server.fetches == 2
