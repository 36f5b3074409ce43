"""The ambassador's lean HTTP/1.1 client against a raw upstream that answers exactly the bytes given.

Each case is what a real server may send (chunked with extensions and trailers, close-delimited, 100
Continue, keep-alive) or what a proxy must refuse rather than guess at (two Content-Lengths, another
transfer coding, a bare LF, obsolete folding): refused means UpstreamError, and a 502 from the proxy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from exchange.upstream import UpstreamError, UpstreamPool, UpstreamTimeout


class RawUpstream:
    """Answers each request with the next scripted response; counts connections and requests."""

    def __init__(self, *responses: bytes, close_after: bool = False, silent: bool = False) -> None:
        self.responses = list(responses)
        self.silent = silent
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.silent:
            await reader.read()  # reads the request, never answers
        try:
            while self.responses:
                head = await reader.readuntil(b"\r\n\r\n")
                body = b""
                if b"content-length: " in head:
                    length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(length)
                elif b"transfer-encoding: chunked" in head:
                    while True:
                        size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
                        body += (await reader.readexactly(size + 2))[:-2]
                        if size == 0:
                            break
                self.requests.append(head + body)
                writer.write(self.responses.pop(0))
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[object]:
    servers: list[asyncio.AbstractServer] = []

    async def start(upstream: RawUpstream) -> UpstreamPool:
        server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return UpstreamPool("127.0.0.1", port, host_header=b"up.test", timeout=2.0)

    yield start
    for server in servers:
        server.close()


async def fetch(pool: UpstreamPool, method: bytes = b"GET", body: bytes | None = None) -> tuple[int, bytes]:
    response = await pool.request(method, b"/x", [(b"accept", b"*/*")], body)
    data = b"".join([chunk async for chunk in response.body()])
    response.close()
    return response.status, data


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class TestFraming:
    async def test_content_length_body_and_keep_alive_reuse(self, serve) -> None:  # type: ignore[no-untyped-def]
        upstream = RawUpstream(OK, OK, OK)
        pool = await serve(upstream)
        assert [await fetch(pool) for _ in range(3)] == [(200, b"ok")] * 3
        assert upstream.connections == 1
        assert upstream.requests[0].startswith(b"GET /x HTTP/1.1\r\nhost: up.test\r\naccept: */*\r\n\r\n")

    async def test_chunked_with_extensions_and_trailers(self, serve) -> None:  # type: ignore[no-untyped-def]
        chunked = (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\n"
        )
        upstream = RawUpstream(chunked, OK)
        pool = await serve(upstream)
        assert await fetch(pool) == (200, b"abcde")
        assert await fetch(pool) == (200, b"ok")
        assert upstream.connections == 1

    async def test_chunked_wins_over_content_length(self, serve) -> None:  # type: ignore[no-untyped-def]
        both = (
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n"
            b"2\r\nhi\r\n0\r\n\r\n"
        )
        assert await fetch(await serve(RawUpstream(both))) == (200, b"hi")

    async def test_a_body_until_close_is_read_and_the_connection_dropped(self, serve) -> None:  # type: ignore[no-untyped-def]
        upstream = RawUpstream(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", OK, close_after=True)
        pool = await serve(upstream)
        assert await fetch(pool) == (200, b"until the end")
        assert await fetch(pool) == (200, b"ok")
        assert upstream.connections == 2

    async def test_interim_answers_are_skipped_and_head_has_no_body(self, serve) -> None:  # type: ignore[no-untyped-def]
        early = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"
        head = b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n"
        pool = await serve(RawUpstream(early, head))
        assert await fetch(pool) == (204, b"")
        assert await fetch(pool, b"HEAD") == (200, b"")

    async def test_a_streamed_request_body_goes_chunked(self, serve) -> None:  # type: ignore[no-untyped-def]
        upstream = RawUpstream(OK)
        pool = await serve(upstream)

        async def pieces() -> AsyncIterator[bytes]:
            yield b"abc"
            yield b""
            yield b"def"

        response = await pool.request(b"POST", b"/x", [], pieces())
        response.close()
        assert upstream.requests[0].endswith(b"transfer-encoding: chunked\r\n\r\nabcdef")


BROKEN = {
    "two content lengths": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
    "another transfer coding": b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
    "obsolete folding": b"HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 0\r\n\r\n",
    "bare LF in a header": b"HTTP/1.1 200 OK\r\nx-a: 1\nx-b: 2\r\ncontent-length: 0\r\n\r\n",
    "bad status line": b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n",
    "bad chunk size": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    "switching protocols": b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
    "closed mid-body": b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
}


@pytest.mark.parametrize("answer", list(BROKEN.values()), ids=list(BROKEN))
async def test_an_ambiguous_or_broken_answer_is_refused(serve, answer: bytes) -> None:  # type: ignore[no-untyped-def]
    pool = await serve(RawUpstream(answer, close_after=True))
    with pytest.raises(UpstreamError):
        await fetch(pool)


async def test_a_silent_upstream_times_out(serve) -> None:  # type: ignore[no-untyped-def]
    pool = await serve(RawUpstream(silent=True))
    pool.timeout = 0.2
    with pytest.raises(UpstreamTimeout):
        await fetch(pool)


async def test_a_refused_connection_is_an_upstream_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UpstreamError):
        await fetch(UpstreamPool("127.0.0.1", port, host_header=b"x"))
