"""Replay guards: a single-use jti is accepted exactly once, sequentially and under concurrency."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from joserfc.jwk import Key

from exchange.verify import InMemoryReplayGuard, PostgresReplayGuard, PurposeTokenVerifier, VerificationError
from tests.verify.conftest import AUDIENCE, ISSUER, NOW, base_claims, mint, postgres_dsn, public_jwks


class TestInMemory:
    def test_sequential_reuse_is_refused_until_expiry(self) -> None:
        guard = InMemoryReplayGuard()
        assert guard.consume_sync(ISSUER, "j1", NOW + 60, now=NOW) is True
        assert guard.consume_sync(ISSUER, "j1", NOW + 60, now=NOW + 59) is False
        # Another issuer's jti space is separate.
        assert guard.consume_sync("https://other.test", "j1", NOW + 60, now=NOW) is True
        # Past expiry the record is dropped (the token itself no longer verifies by then).
        assert guard.consume_sync(ISSUER, "j1", NOW + 120, now=NOW + 60) is True
        assert len(guard) == 1  # both NOW + 60 records were purged; only the new one is held

    def test_threads_racing_on_one_jti_yield_exactly_one_success(self) -> None:
        guard = InMemoryReplayGuard()
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda _: guard.consume_sync(ISSUER, "j", NOW + 60, now=NOW), range(64)))
        assert results.count(True) == 1

    def test_full_guard_fails_closed(self) -> None:
        guard = InMemoryReplayGuard(max_entries=2)
        assert guard.consume_sync(ISSUER, "a", NOW + 60, now=NOW)
        assert guard.consume_sync(ISSUER, "b", NOW + 60, now=NOW)
        assert guard.consume_sync(ISSUER, "c", NOW + 60, now=NOW) is False
        assert guard.consume_sync(ISSUER, "c", NOW + 60, now=NOW + 60) is True  # room again after expiry

    async def test_concurrent_verifies_of_one_token_yield_exactly_one_success(self, ec_key: Key) -> None:
        verifier = PurposeTokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(ec_key))
        token = mint(ec_key, base_claims(single_use=True))
        results = await asyncio.gather(
            *(verifier.averify(token, now=NOW) for _ in range(20)), return_exceptions=True
        )
        assert sum(not isinstance(result, BaseException) for result in results) == 1
        assert {result.reason for result in results if isinstance(result, VerificationError)} == {"replayed"}


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A schema unique to this test, dropped afterwards. Skips without PostgreSQL, except under CI."""
    import asyncpg

    dsn = postgres_dsn()
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {dsn} is required under CI: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {dsn}: {exc}")
    schema = f"verify_replay_{uuid.uuid4().hex[:12]}"
    try:
        yield schema
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


@pytest.mark.postgres
class TestPostgres:
    async def test_sequential_reuse_is_refused_until_expiry(self, pg_schema: str) -> None:
        async with PostgresReplayGuard(postgres_dsn(), schema=pg_schema) as guard:
            assert await guard.consume(ISSUER, "j1", NOW + 60, now=NOW) is True
            assert await guard.consume(ISSUER, "j1", NOW + 60, now=NOW + 59) is False
            assert await guard.consume("https://other.test", "j1", NOW + 60, now=NOW) is True
            assert await guard.consume(ISSUER, "j1", NOW + 120, now=NOW + 60) is True
            assert await guard.purge(NOW + 60) == 1
            assert await guard.consume(ISSUER, "j1", NOW + 180, now=NOW + 61) is False

    async def test_replicas_racing_on_one_jti_yield_exactly_one_success(self, pg_schema: str) -> None:
        # Two guards with their own pools stand for two replicas of the same service.
        async with (
            PostgresReplayGuard(postgres_dsn(), schema=pg_schema, max_size=4) as first,
            PostgresReplayGuard(postgres_dsn(), schema=pg_schema, max_size=4) as second,
        ):
            attempts = [guard.consume(ISSUER, "raced", NOW + 60, now=NOW) for guard in (first, second) * 10]
            results = await asyncio.gather(*attempts)
        assert results.count(True) == 1

    async def test_verifier_with_postgres_guard_refuses_the_replay(self, pg_schema: str, ec_key: Key) -> None:
        async with PostgresReplayGuard(postgres_dsn(), schema=pg_schema) as guard:
            verifier = PurposeTokenVerifier(
                issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(ec_key), replay_guard=guard
            )
            token = mint(ec_key, base_claims(single_use=True))
            results = await asyncio.gather(
                *(verifier.averify(token, now=NOW) for _ in range(8)), return_exceptions=True
            )
        assert sum(not isinstance(result, BaseException) for result in results) == 1
        assert {result.reason for result in results if isinstance(result, VerificationError)} == {"replayed"}

    def test_unsafe_identifiers_are_refused(self) -> None:
        with pytest.raises(ValueError):
            PostgresReplayGuard(postgres_dsn(), table='x"; DROP TABLE y; --')
