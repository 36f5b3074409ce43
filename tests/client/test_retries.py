"""Retries against a real store outage: a PostgreSQL-backed exchange whose database stops accepting
connections answers 503 temporarily_unavailable; the client retries with backoff and gets through
once the database is back, or gives up after its bounded attempts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from exchange.client import PrivateKeyJWT, PurposeTokenClient, Retry, Unavailable
from tests.client.conftest import client_purposes, identity
from tests.conftest import new_kek, pg_config
from tests.idp import FakeIdP, load_key
from tests.server import Server, free_port

pytestmark = pytest.mark.postgres
CRM = "https://crm.internal"


@pytest.fixture
async def pg_exchange(tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP, pg_url: str) -> AsyncIterator[Server]:
    port = free_port()
    config = pg_config(tmp_path, port, idp, idp_ec, pg_url, extra=client_purposes())
    server = Server(config, port, env={"EXCHANGE_KEK": new_kek()})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


class Outage:
    """Stop and restore connections to one database, as a failed-over or restarting server would."""

    def __init__(self, admin: asyncpg.Connection, pg_url: str) -> None:
        self.admin = admin
        self.name = urlsplit(pg_url).path.lstrip("/")

    async def begin(self) -> None:
        await self.admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
        await self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", self.name
        )

    async def end(self) -> None:
        await self.admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')


@pytest.fixture
async def outage(pg_server_dsn: str, pg_url: str) -> AsyncIterator[Outage]:
    admin = await asyncpg.connect(pg_server_dsn)
    out = Outage(admin, pg_url)
    try:
        yield out
    finally:
        await out.end()
        await admin.close()


async def test_an_outage_that_ends_is_ridden_out_with_fresh_assertions(
    pg_exchange: Server, outage: Outage, idp: FakeIdP, pg_url: str
) -> None:
    waits: list[float] = []

    async def wait(delay: float) -> None:
        if not waits:
            await outage.end()  # the database comes back while the client waits
        waits.append(delay)
        await asyncio.sleep(delay)

    client = PurposeTokenClient(
        "signer",
        issuer=pg_exchange.url,
        auth=PrivateKeyJWT(load_key("client_ec")),
        # A generous cap, so a Retry-After the exchange may send is honoured rather than a reason to stop.
        retry=Retry(attempts=8, base_delay=0.2, max_delay=10.0),
        async_sleep=wait,
    )
    try:
        await client.aget("customer.export", identity(idp, "signer"), audience=CRM)  # discovery done
        await outage.begin()
        token = await client.aget("customer.export", identity(idp, "signer"), audience=CRM)
    finally:
        await client.aclose()
    assert waits, "the first attempt during the outage should have failed"
    attempt = int(token.request_id.rsplit(".", 1)[1])
    assert attempt == len(waits) + 1
    db = await asyncpg.connect(pg_url)
    try:
        rows = await db.fetch("SELECT decision FROM audit_records WHERE request_id = $1", token.request_id)
    finally:
        await db.close()
    assert [r["decision"] for r in rows] == ["granted"]


async def test_an_outage_that_lasts_is_unavailable_after_the_bounded_attempts(
    pg_exchange: Server, outage: Outage, idp: FakeIdP
) -> None:
    waits: list[float] = []

    async def wait(delay: float) -> None:
        waits.append(delay)

    client = PurposeTokenClient(
        "teller",
        issuer=pg_exchange.url,
        retry=Retry(attempts=3, base_delay=0.05, max_delay=10.0),
        async_sleep=wait,
    )
    try:
        await client.aget("statement.read", identity(idp), audience="https://archive.internal")
        await outage.begin()
        with pytest.raises(Unavailable) as caught:
            await client.aget("statement.read", identity(idp), audience="https://archive.internal")
    finally:
        await client.aclose()
    down = caught.value
    assert (down.status, down.error, down.attempts) == (503, "temporarily_unavailable", 3)
    assert len(waits) == 2
