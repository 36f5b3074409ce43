"""Key rotation under load: two replicas on one PostgreSQL, a steady stream of exchanges, downstream
verifiers whose cached JWKS honours max-age and nothing else, and `exchange keys rotate` mid-stream.

The clock: the lifecycle is pure (exchange/lifecycle.py) and every replica runs the same step
(`KeyRing.advance`) on the store under its key lock. Here the test is the replica whose step runs: it
calls `KeyRing.advance(now)` on the shared database with a clock it moves itself, and the verifiers'
JWKS caches read that same clock. The two servers run their own step too, on the real clock, which in
this test never reaches a due time (the staged key is due 360 s after it was staged): nothing in
production takes a faked time. The servers follow the store as they would any other replica's change.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import jwt as pyjwt
import pytest

from exchange.kek import KeyEncryption
from exchange.keys import KeyRing
from exchange.lifecycle import Timing
from exchange.store.postgres import PostgresStore
from exchange.verify import PurposeTokenVerifier
from exchange.verify.errors import VerificationError
from exchange.verify.jwks import JWKSCache
from schemas.config import StoreConfig
from tests.conftest import exchange_form
from tests.idp import FakeIdP
from tests.server import Server
from tests.test_postgres_app import Replicas

pytestmark = pytest.mark.postgres

MAX_AGE = 300.0  # the default signing.jwks_max_age
# The shared test config: purposes of 60 s and 120 s. Published before signing: max-age + the default
# margin (60 s); after: the longest ttl + the largest leeway (120 s) + max-age.
ACTIVATION_WAIT = MAX_AGE + 60
RETIREMENT_WAIT = 120 + 120 + MAX_AGE
VERIFIERS = 6


@pytest.fixture
def replicas(tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP, pg_url: str) -> Iterator[Replicas]:
    group = Replicas(tmp_path, idp, idp_ec, pg_url)
    try:
        yield group
    finally:
        group.stop()


@dataclass
class Clock:
    now: float


@dataclass
class Downstream:
    """Verifiers of every token both replicas issue, at the test's clock; what they saw."""

    verifiers: list[PurposeTokenVerifier]
    issued: list[tuple[str, str]] = field(default_factory=list)  # (kid, token)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (kid, verifier, reason)

    async def check(self, token: str) -> None:
        kid = str(pyjwt.get_unverified_header(token)["kid"])
        self.issued.append((kid, token))
        for v in self.verifiers:
            try:
                await v.averify(token)
            except VerificationError as exc:
                self.failures.append((kid, v.keys.uri if isinstance(v.keys, JWKSCache) else "?", exc.reason))


async def until(condition: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"not within {within:.0f} s: {what}"
        await asyncio.sleep(0.1)


def same_issuer(replicas: Replicas, servers: list[Server]) -> str:
    """Replicas of one deployment share one issuer: the first one's URL, for both."""
    issuer = servers[0].url
    for server in servers[1:]:
        text = server.config.read_text().replace(f'issuer = "{server.url}"', f'issuer = "{issuer}"', 1)
        server.config.write_text(text)
    return issuer


async def run_rotation(replicas: Replicas, idp: FakeIdP, *, rotate_args: tuple[str, ...]) -> Downstream:
    servers = replicas.start(2)
    issuer = same_issuer(replicas, servers)
    for i, server in enumerate(servers[1:], 1):
        servers[i] = restart(replicas, server)
    clock = Clock(time.time() - MAX_AGE)
    rng = random.Random(10)
    downstream = Downstream(
        [
            PurposeTokenVerifier(
                issuer=issuer,
                audience="https://payments.internal",
                # Honours max-age and nothing else: no refetch on an unknown kid, ever.
                jwks=JWKSCache(
                    f"{servers[i % 2].url}/.well-known/jwks.json", clock=lambda: clock.now, cooldown=1e9
                ),
            )
            for i in range(VERIFIERS)
        ]
    )
    # Each verifier fetched the JWKS at an arbitrary moment of the max-age before the rotation.
    moments = sorted(rng.uniform(0, MAX_AGE - 1) for _ in range(VERIFIERS))
    for verifier, moment in zip(downstream.verifiers, moments, strict=True):
        clock.now = time.time() - MAX_AGE + moment
        await verifier.refresh_keys()
    clock.now = time.time()

    kek = KeyEncryption(base64.urlsafe_b64decode(replicas.env["EXCHANGE_KEK"] + "="))
    store = PostgresStore(StoreConfig(url=replicas.url))
    await store.open()
    ring = KeyRing(store, kek, "ES256", timing=Timing(jwks_max_age=MAX_AGE, margin=60, longest_ttl=120))
    stop = asyncio.Event()

    async def stream(server: Server) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            while not stop.is_set():
                resp = await client.post("/token", data=exchange_form(idp.token()))
                assert resp.status_code == 200, resp.text
                await downstream.check(resp.json()["access_token"])

    async def more_tokens(count: int = 4) -> None:
        seen = len(downstream.issued)
        await until(lambda: _true(len(downstream.issued) >= seen + count), f"{count} more tokens")

    async def published(server: Server) -> set[str]:
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.get(f"{server.url}/.well-known/jwks.json")
        return {k["kid"] for k in resp.json()["keys"]}

    streams = [asyncio.create_task(stream(s)) for s in servers]
    try:
        await more_tokens()
        [old] = [k.kid for k in await store.list_keys() if k.state == "current"]

        rotated = await asyncio.to_thread(replicas.cli, "keys", "rotate", *rotate_args)
        assert rotated.returncode == 0, rotated.stderr
        keys = {k.kid: k for k in await store.list_keys()}
        [new] = [kid for kid in keys if kid != old]
        staged = keys[new]

        async def everywhere() -> bool:
            return all([new in await published(s) for s in servers])

        # Every replica publishes the new key well within the margin (real seconds; the test's clock
        # stands still meanwhile, so this is part of "first published").
        await until(everywhere, "both replicas publish the staged key")
        await more_tokens()

        activation = staged.created_at + ACTIVATION_WAIT
        if staged.state == "next":
            # Time passes in steps, tokens flowing at each; the step only acts once it is due.
            while clock.now < activation - 20:
                clock.now += 20
                await more_tokens()
                assert await ring.advance(clock.now) == []
            clock.now = activation - 1
            assert await ring.advance(clock.now) == []
            clock.now = activation
            changes = await ring.advance(clock.now)
            assert [(c.kid, c.to_state) for c in changes] == [(old, "previous"), (new, "current")]  # type: ignore[union-attr]
        stopped_signing = next(k for k in await store.list_keys() if k.kid == old).deactivated_at
        assert stopped_signing is not None

        async def signing_new() -> bool:
            recent = [kid for kid, _ in downstream.issued[-6:]]
            return len(recent) == 6 and set(recent) == {new}

        await until(signing_new, "both replicas sign with the new key")

        retirement = stopped_signing + RETIREMENT_WAIT
        while clock.now < retirement - 20:
            clock.now += 20
            await more_tokens()
            assert await ring.advance(clock.now) == []
        clock.now = retirement - 1
        assert await ring.advance(clock.now) == []
        clock.now = retirement
        assert [(c.kid, c.to_state) for c in await ring.advance(clock.now)] == [(old, "retired")]  # type: ignore[union-attr]

        async def unpublished() -> bool:
            return all([await published(s) == {new} for s in servers])

        await until(unpublished, "both replicas stop publishing the retired key")
        await more_tokens()
    finally:
        stop.set()
        results = await asyncio.gather(*streams, return_exceptions=True)
        await store.close()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    db = await asyncpg.connect(replicas.url)
    try:
        row = await db.fetchrow("SELECT state, private_jwk, retired_at FROM signing_keys WHERE kid = $1", old)
    finally:
        await db.close()
    assert (row["state"], row["private_jwk"], row["retired_at"]) == ("retired", None, retirement)
    assert {kid for kid, _ in downstream.issued} == {old, new}
    return downstream


def _true(value: bool) -> Awaitable[bool]:
    async def answer() -> bool:
        return value

    return answer()


def popen(replicas: Replicas, *args: str) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("exchange")
    return subprocess.Popen(
        [str(exe), *args, "--config", str(replicas.servers[0].config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **replicas.env},
    )


def restart(replicas: Replicas, server: Server) -> Server:
    server.stop()
    again = Server(server.config, server.port, env=replicas.env)
    replicas.servers.append(again)
    again.wait_ready()
    return again


async def test_a_staged_rotation_under_load_fails_no_verification_anywhere(
    replicas: Replicas, idp: FakeIdP
) -> None:
    downstream = await run_rotation(replicas, idp, rotate_args=())
    assert downstream.failures == []
    assert len(downstream.issued) >= 40


async def test_the_same_rotation_done_at_once_fails_at_verifiers_that_cached_the_old_set(
    replicas: Replicas, idp: FakeIdP
) -> None:
    # What the staged rotation prevents, and that the test above could see it: `--now` signs before
    # these verifiers' caches expire, so they refuse the new key's tokens.
    downstream = await run_rotation(replicas, idp, rotate_args=("--now", "--yes"))
    assert downstream.failures
    assert {reason for _, _, reason in downstream.failures} == {"unknown_key"}
    old = downstream.issued[0][0]
    assert old not in {kid for kid, _, _ in downstream.failures}


class TestConcurrentRotations:
    async def test_two_cli_runs_at_once_stage_one_key_and_two_emergency_runs_leave_one_current(
        self, replicas: Replicas
    ) -> None:
        replicas.start(1)

        def both(*args: str) -> list[subprocess.Popen[bytes]]:
            procs = [popen(replicas, "keys", *args) for _ in range(2)]
            for p in procs:
                p.wait(60)
            return procs

        staged = await asyncio.to_thread(both, "rotate")
        assert all(p.returncode == 0 for p in staged)
        emergency = await asyncio.to_thread(both, "rotate", "--now", "--yes")
        assert all(p.returncode == 0 for p in emergency)
        db = await asyncpg.connect(replicas.url)
        try:
            states = [r["state"] for r in await db.fetch("SELECT state FROM signing_keys")]
        finally:
            await db.close()
        # Staged once (the second run found it staged), then: the first emergency run promoted it,
        # the second made a new current key. Never two current keys, never two staged.
        assert sorted(states) == ["current", "previous", "previous"]

    async def test_replicas_stepping_the_lifecycle_at_once_promote_the_staged_key_once(
        self, replicas: Replicas
    ) -> None:
        replicas.start(1)
        assert replicas.cli("keys", "rotate").returncode == 0
        kek = KeyEncryption(base64.urlsafe_b64decode(replicas.env["EXCHANGE_KEK"] + "="))
        stores = [PostgresStore(StoreConfig(url=replicas.url)) for _ in range(4)]
        for s in stores:
            await s.open()
        try:
            rings = [KeyRing(s, kek, "ES256") for s in stores]
            due = time.time() + 10_000
            results = await asyncio.gather(*(r.advance(due) for r in rings for _ in range(3)))
            assert sorted(len(r) for r in results) == [0] * 11 + [2]
            states = sorted(k.state for k in await stores[0].list_keys())
            assert states == ["current", "previous"]
        finally:
            for s in stores:
                await s.close()
