"""Slow clients cannot block /token: a thousand connections that dribble (nothing at all, a request head
a line at a time, a body a byte at a time) are cut off by the server, and a legitimate exchange started
while they are all connected still completes.

Bounded load on loopback, one asyncio loop: each dribbler sends one small write every half second.
Deadlines are generous functional bounds, never speed claims (speed is measured by bench/). The
figures (how long the legitimate exchanges and the cut-offs took) are printed for `pytest -s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from exchange.endpoint import BodyDeadlines
from exchange.errors import RequestTimeout
from tests.conftest import exchange_form, write_config
from tests.idp import FakeIdP
from tests.server import Server, free_port

DRIBBLERS = 1000
LIMITS = """
[limits]
header_timeout = 2
body_timeout = 2
"""
# Each kind holds a connection open a different way.
KINDS = ("silent", "head", "body")
HEAD = b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
FULL_HEAD = HEAD + b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 4096\r\n\r\n"


@dataclass
class Dribbler:
    kind: str
    opened: float = 0.0
    closed_after: float | None = None  # seconds from open until the server closed the connection
    answer: bytes = b""
    writes: int = 0
    failures: list[str] = field(default_factory=list)

    async def run(self, port: int, connected: asyncio.Event, go_on: asyncio.Event) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            self.failures.append(f"connect: {exc}")
            connected.set()
            return
        self.opened = time.monotonic()
        connected.set()
        drip = asyncio.create_task(self._drip(writer))
        try:
            # The server must close the connection; reading b"" (EOF) is how the client sees it.
            self.answer = await asyncio.wait_for(reader.read(), timeout=120)
            self.closed_after = time.monotonic() - self.opened
        except (TimeoutError, ConnectionError) as exc:
            self.failures.append(f"read: {exc!r}")
        finally:
            drip.cancel()
            writer.close()
            await go_on.wait()

    async def _drip(self, writer: asyncio.StreamWriter) -> None:
        try:
            if self.kind == "head":
                writer.write(HEAD)
            elif self.kind == "body":
                writer.write(FULL_HEAD)
            while True:
                await asyncio.sleep(0.5)
                if self.kind == "head":
                    writer.write(b"X-Dribble: %d\r\n" % self.writes)
                elif self.kind == "body":
                    writer.write(b"a")
                else:
                    continue
                self.writes += 1
                await writer.drain()
        except (ConnectionError, RuntimeError):
            return  # the server closed it: that is the point


@contextlib.contextmanager
def serving(factory: pytest.TempPathFactory, idp: FakeIdP, idp_ec: FakeIdP, limits: str) -> Iterator[Server]:
    """A real `exchange serve` on the shared test config with these [limits]."""
    folder = factory.mktemp("slow")
    port = free_port()
    server = Server(write_config(folder, port, idp, idp_ec, extra=limits), port)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def open_files() -> Iterator[None]:
    """Room for the dribblers' sockets in this process (the server raises its own limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = DRIBBLERS + 512
    if soft < needed:
        if hard < needed:
            pytest.fail(f"the open-file hard limit ({hard}) is below the {needed} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_thousand_dribbling_connections_neither_block_token_nor_stay_open(
    tmp_path_factory: pytest.TempPathFactory, idp: FakeIdP, idp_ec: FakeIdP, open_files: None
) -> None:
    with serving(tmp_path_factory, idp, idp_ec, LIMITS) as server:
        port = server.port
        go_on = asyncio.Event()
        dribblers = [Dribbler(KINDS[i % len(KINDS)]) for i in range(DRIBBLERS)]
        events = [asyncio.Event() for _ in dribblers]
        started = time.monotonic()
        tasks = [asyncio.create_task(d.run(port, e, go_on)) for d, e in zip(dribblers, events, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), timeout=60)
        connected_in = time.monotonic() - started
        assert [d.failures for d in dribblers if d.failures] == []

        # While every dribbler is connected: legitimate exchanges on fresh connections.
        latencies = []
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            for _ in range(5):
                asked = time.monotonic()
                resp = await client.post("/token", data=exchange_form(idp.token()))
                latencies.append(time.monotonic() - asked)
                assert resp.status_code == 200, resp.text
        still_open = sum(d.closed_after is None for d in dribblers)

        # Every dribbler is cut off by the server (generous bound: timeouts of 2 s, 60 s allowed).
        go_on.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=150)
        assert [d.failures for d in dribblers if d.failures] == []
        closed = {kind: sorted(d.closed_after or 0 for d in dribblers if d.kind == kind) for kind in KINDS}
        assert all(after < 60 for times in closed.values() for after in times), closed
        # Heads that never complete are dropped without an answer; bodies that never complete are
        # answered 408 with the RFC 6749 JSON body, and the connection is closed.
        assert {d.answer for d in dribblers if d.kind != "body"} == {b""}
        for d in (d for d in dribblers if d.kind == "body"):
            head, _, body = d.answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 "), d.answer[:200]
            assert b"\r\nconnection: close" in head.lower()
            assert json.loads(body) == {
                "error": "invalid_request",
                "error_description": "the request body did not arrive in time",
            }
        # The server is still fine afterwards.
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            assert (await client.post("/token", data=exchange_form(idp.token()))).status_code == 200
        print(
            f"\n{DRIBBLERS} dribblers connected in {connected_in:.2f}s; while they were connected "
            f"({still_open} still open after the exchanges), 5 exchanges took "
            + ", ".join(f"{x:.3f}" for x in latencies)
            + "s; cut off after (min/median/max s): "
            + "; ".join(
                f"{kind} {times[0]:.2f}/{times[len(times) // 2]:.2f}/{times[-1]:.2f}"
                for kind, times in closed.items()
            )
        )


async def test_connections_beyond_max_connections_wait_in_the_backlog_and_are_served(
    tmp_path_factory: pytest.TempPathFactory, idp: FakeIdP, idp_ec: FakeIdP
) -> None:
    # 16 connections per worker (the minimum), 48 silent dribblers: the exchange's connection waits in
    # the backlog until header_timeout frees places, then is served like any other.
    with serving(tmp_path_factory, idp, idp_ec, LIMITS + "max_connections = 16\n") as server:
        holders = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(48)]
        asked = time.monotonic()
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            resp = await client.post("/token", data=exchange_form(idp.token()))
        waited = time.monotonic() - asked
        assert resp.status_code == 200, resp.text
        cut = [await asyncio.wait_for(reader.read(), timeout=60) for reader, _ in holders]
        assert cut == [b""] * len(holders)
        for _, writer in holders:
            writer.close()
        print(f"\nbehind 48 silent connections with max_connections = 16, the exchange took {waited:.2f}s")


async def test_an_idle_keep_alive_connection_is_closed_after_header_timeout(
    tmp_path_factory: pytest.TempPathFactory, idp: FakeIdP, idp_ec: FakeIdP
) -> None:
    with serving(tmp_path_factory, idp, idp_ec, LIMITS) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # keep-alive by default
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
        assert head.startswith(b"HTTP/1.1 200 ")
        length = int(next(line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length"))
                     .split(b":")[1])  # fmt: skip
        await reader.readexactly(length)
        # Then nothing more is sent: the server closes the idle connection on its own.
        assert await asyncio.wait_for(reader.read(), timeout=60) == b""
        writer.close()


class TestBodyDeadlines:
    """The body timeout of every /token request on one timer (exchange/endpoint.py): each read is cut
    off at its own deadline, a read that finishes is untouched, and a cancellation that is not the
    deadline's stays a cancellation."""

    @staticmethod
    def receiver(chunks: list[bytes], pause: float) -> Any:
        async def receive() -> dict[str, Any]:
            await asyncio.sleep(pause)
            body = chunks.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(chunks)}

        return receive

    async def test_each_read_is_cut_off_at_its_own_deadline_and_the_others_finish(self) -> None:
        deadlines = BodyDeadlines(0.3)
        started = time.monotonic()

        async def read(chunks: list[bytes], pause: float) -> bytes | str:
            try:
                return await deadlines.read(self.receiver(chunks, pause), 1024)
            except RequestTimeout:
                return f"timeout after {time.monotonic() - started:.2f}"

        async def later(delay: float, chunks: list[bytes], pause: float) -> bytes | str:
            await asyncio.sleep(delay)
            return await read(chunks, pause)

        results = await asyncio.gather(
            read([b"a=1"], 0.0),  # at once
            read([b"a", b"=", b"2"], 0.05),  # three chunks, well within the deadline
            read([b"x"] * 100, 0.05),  # a dribbler: cut off after 0.3 s in all, not per chunk
            later(0.2, [b"y"] * 100, 0.05),  # a later dribbler: cut off at its own deadline
            later(0.2, [b"b=3"], 0.0),
        )
        assert results[0] == b"a=1" and results[1] == b"a=2" and results[4] == b"b=3"
        first, second = (float(str(r).split()[-1]) for r in results[2:4])
        assert str(results[2]).startswith("timeout") and str(results[3]).startswith("timeout")
        # Each cut off at its own deadline, never before it (lower bounds only: no speed claim).
        assert first >= 0.3 and second >= 0.5

    async def test_a_cancellation_that_is_not_the_deadline_stays_one(self) -> None:
        deadlines = BodyDeadlines(30)
        task = asyncio.create_task(deadlines.read(self.receiver([b"a=1"], 10), 1024))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # And the deadline's timer has nothing left to cancel.
        assert await deadlines.read(self.receiver([b"b=2"], 0.0), 1024) == b"b=2"
