"""The service on PostgreSQL, over real HTTP: group commit, outages, and replicas sharing one database.

Each test starts real `exchange serve` processes on its own fresh database (`pg_url`). The app builds its
own pool from the DSN in its config; the tests read the database through their own connections.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import jwt as pyjwt
import pytest

from tests.conftest import exchange_form, new_kek, pg_config
from tests.idp import FakeIdP
from tests.server import Server, free_port

pytestmark = pytest.mark.postgres


class Replicas:
    """Exchange processes sharing one database and one KEK, as in a real deployment."""

    def __init__(self, tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP, url: str) -> None:
        self.tmp_path, self.idp, self.idp_ec, self.url = tmp_path, idp, idp_ec, url
        self.env = {"EXCHANGE_KEK": new_kek()}
        self.servers: list[Server] = []

    def start(self, count: int) -> list[Server]:
        started = []
        for _ in range(count):
            folder = self.tmp_path / f"replica{len(self.servers)}"
            folder.mkdir()
            port = free_port()
            server = Server(pg_config(folder, port, self.idp, self.idp_ec, self.url), port, env=self.env)
            self.servers.append(server)
            started.append(server)
        for server in started:  # started together: they race to migrate and to create the first key
            server.wait_ready()
        return started

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        exe = Path(sys.executable).with_name("exchange")
        return subprocess.run(
            [str(exe), *args, "--config", str(self.servers[0].config)],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **self.env},
        )

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def replicas(tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP, pg_url: str) -> Iterator[Replicas]:
    group = Replicas(tmp_path, idp, idp_ec, pg_url)
    try:
        yield group
    finally:
        group.stop()


def jti_of(token: str) -> str:
    return str(pyjwt.decode(token, options={"verify_signature": False})["jti"])


def verify(token: str, jwks_url: str) -> dict[str, Any]:
    key = pyjwt.PyJWKClient(jwks_url, cache_keys=False).get_signing_key_from_jwt(token)
    return dict(pyjwt.decode(token, key.key, algorithms=["ES256"], audience="https://payments.internal"))


async def test_concurrent_requests_are_group_committed_and_each_answer_follows_its_commit(
    replicas: Replicas, idp: FakeIdP, pg_url: str
) -> None:
    [server] = replicas.start(1)
    db = await asyncpg.create_pool(pg_url, min_size=1, max_size=8)
    missing: list[str] = []

    async def one(client: httpx.AsyncClient, n: int) -> str:
        resp = await client.post(
            "/token", data=exchange_form(idp.token()), headers={"X-Request-ID": f"gc-{n}"}
        )
        assert resp.status_code == 200, resp.text
        jti = jti_of(resp.json()["access_token"])
        # Read at once, from outside the service: the record must already be committed.
        if await db.fetchval("SELECT count(*) FROM audit_records WHERE jti = $1", jti) != 1:
            missing.append(jti)
        return jti

    try:
        async with httpx.AsyncClient(
            base_url=server.url, timeout=10, limits=httpx.Limits(max_connections=64)
        ) as client:
            jtis = await asyncio.gather(*(one(client, n) for n in range(120)))
        rows = await db.fetch("SELECT request_id, jti, decision, xmin::text AS tx FROM audit_records")
    finally:
        await db.close()

    assert missing == []
    assert len(set(jtis)) == 120
    granted = {r["jti"]: r["request_id"] for r in rows if r["decision"] == "granted"}
    assert {granted[j] for j in jtis} == {f"gc-{n}" for n in range(120)}
    # Rows written by one INSERT share a transaction id: fewer transactions than records proves that
    # concurrent requests' records were committed together.
    assert len({r["tx"] for r in rows}) < len(rows)


async def test_database_down_gives_bounded_503_readyz_fails_healthz_stays_and_it_recovers(
    replicas: Replicas, idp: FakeIdP, pg_url: str, pg_server_dsn: str
) -> None:
    [server] = replicas.start(1)
    name = urlsplit(pg_url).path.lstrip("/")
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=15) as client:
            assert (await client.post("/token", data=exchange_form(idp.token()))).status_code == 200

            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )

            # Answered, not hung: the client's 15 s timeout is far above the store's bounded wait.
            down = await client.post("/token", data=exchange_form(idp.token()))
            assert down.status_code == 503, down.text
            assert down.json()["error"] == "temporarily_unavailable"
            assert down.headers["retry-after"] == "2"  # a short wait, within a client's bounded retry
            assert "access_token" not in down.json()
            not_ready = await client.get("/readyz")
            assert (not_ready.status_code, not_ready.headers["retry-after"]) == (503, "2")
            body = not_ready.json()
            assert body["status"] == "unavailable"  # and the body names what is down
            named = {c["name"]: c["status"] for c in body["checks"]}
            assert (named["store"], named["signing_key"]) == ("down", "ok")
            assert (await client.get("/healthz")).status_code == 200

            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            deadline = time.monotonic() + 30
            while True:
                back = await client.post(
                    "/token", data=exchange_form(idp.token()), headers={"X-Request-ID": "back"}
                )
                if back.status_code == 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert back.status_code == 200, back.text
            assert (await client.get("/readyz")).status_code == 200
        jti = jti_of(back.json()["access_token"])
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    db = await asyncpg.connect(pg_url)
    try:
        assert await db.fetchval("SELECT request_id FROM audit_records WHERE jti = $1", jti) == "back"
    finally:
        await db.close()


async def test_two_replicas_issue_tokens_that_verify_via_either_jwks_and_follow_a_cli_rotation(
    replicas: Replicas, idp: FakeIdP
) -> None:
    a, b = replicas.start(2)
    async with httpx.AsyncClient(timeout=10) as client:

        async def jwks_kids(server: Server) -> set[str]:
            resp = await client.get(f"{server.url}/.well-known/jwks.json")
            return {k["kid"] for k in resp.json()["keys"]}

        async def converge(wanted: str | None = None) -> set[str]:
            # Replicas refresh their key ring from the database within a few seconds.
            deadline = time.monotonic() + 30
            while True:
                ka, kb = await jwks_kids(a), await jwks_kids(b)
                if ka == kb and (wanted is None or wanted in ka):
                    return ka
                assert time.monotonic() < deadline, f"replicas disagree: {ka} vs {kb}"
                await asyncio.sleep(0.25)

        async def token(server: Server) -> str:
            resp = await client.post(f"{server.url}/token", data=exchange_form(idp.token()))
            assert resp.status_code == 200, resp.text
            return str(resp.json()["access_token"])

        await converge()
        for issuer in (a, b):
            issued = await token(issuer)
            for publisher in (a, b):
                claims = await asyncio.to_thread(verify, issued, f"{publisher.url}/.well-known/jwks.json")
                assert claims["iss"] == issuer.url

        rotated = replicas.cli("keys", "rotate", "--now", "--yes")
        assert rotated.returncode == 0, rotated.stderr
        new_kid = rotated.stdout.split()[3]
        published = await converge(new_kid)
        assert new_kid in published

        deadline = time.monotonic() + 30
        for issuer in (a, b):
            while True:
                issued = await token(issuer)
                if pyjwt.get_unverified_header(issued)["kid"] == new_kid:
                    break
                assert time.monotonic() < deadline, "a replica kept signing with the old key"
                await asyncio.sleep(0.25)
            for publisher in (a, b):
                await asyncio.to_thread(verify, issued, f"{publisher.url}/.well-known/jwks.json")


async def test_a_replica_killed_mid_load_answered_no_token_without_a_committed_record(
    replicas: Replicas, idp: FakeIdP, pg_url: str
) -> None:
    [server] = replicas.start(1)
    issued: list[str] = []
    killed = asyncio.Event()

    async def one(client: httpx.AsyncClient) -> None:
        try:
            resp = await client.post("/token", data=exchange_form(idp.token()))
        except httpx.TransportError:
            return  # the process died under this request: no answer, so no token either
        if resp.status_code == 200:
            issued.append(jti_of(resp.json()["access_token"]))
            if len(issued) == 40 and not killed.is_set():
                killed.set()
                os.killpg(server.proc.pid, signal.SIGKILL)

    async with httpx.AsyncClient(
        base_url=server.url, timeout=10, limits=httpx.Limits(max_connections=32)
    ) as client:
        await asyncio.gather(*(one(client) for _ in range(300)))

    assert killed.is_set() and len(issued) >= 40
    db = await asyncpg.connect(pg_url)
    try:
        stored = {
            r["jti"] for r in await db.fetch("SELECT jti FROM audit_records WHERE decision = 'granted'")
        }
    finally:
        await db.close()
    assert set(issued) <= stored
