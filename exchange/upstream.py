"""A lean HTTP/1.1 client for one upstream: what the ambassador needs and nothing else.

The ambassador spent most of its time in a general-purpose client (httpx over httpcore and anyio:
about 2,500 Python calls per proxied request). A proxy to one plain-HTTP upstream needs far less: a
pool of keep-alive connections to one address, one request at a time per connection, the body framed
by us (Content-Length when we hold it all, chunked when it streams), and the response read by the
RFC 9112 rules, streamed back as it arrives.

Correctness kept, in order of RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; `Transfer-Encoding:
chunked` (extensions ignored, trailers dropped) wins over Content-Length; several or malformed
Content-Length values, any other transfer coding, obsolete line folding, a bare LF or a head over
64 KiB are a protocol error (502, the connection dropped), never guessed at; neither header means the
body runs until the upstream closes (and the connection is not reused). A connection goes back to the
pool only after its response was read to the end and neither side said `Connection: close`.

Timeouts: connect, the wait for a pooled connection, every write and every read (between bytes).
Flow control both ways: writes wait for the transport to drain, reads pause the socket while more than
`_HIGH_WATER` bytes wait for the caller.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Final

_MAX_HEAD: Final = 64 * 1024
_HIGH_WATER: Final = 256 * 1024
# Matched with fullmatch: `$` would accept a trailing newline.
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9]{2})(?: [^\r\n]*)?")
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CHUNK_SIZE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")
#: Methods a request may be retried for when a reused connection turned out to be closed already.
_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

Headers = list[tuple[bytes, bytes]]


class UpstreamError(Exception):
    """The upstream could not be reached or broke the protocol (answer 502)."""


class UpstreamTimeout(UpstreamError):
    """Connecting, waiting for a connection, writing or reading took longer than allowed (answer 504)."""


class _Connection(asyncio.Protocol):
    """One socket: bytes in a buffer, a waiter woken on data or close, write flow control."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.eof = True
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(UpstreamError("connection lost while writing"))

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # used by the client
    @property
    def reusable(self) -> bool:
        return (
            not self.eof
            and not self.buffer
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def write(self, data: bytes, limit: float) -> None:
        if self.closed or self.transport is None:
            raise UpstreamError("connection closed")
        self.transport.write(data)
        if self._drain is not None and not self._drain.done():
            try:
                async with asyncio.timeout(limit):
                    await self._drain
            except TimeoutError:
                raise UpstreamTimeout("write timed out") from None

    async def fill(self, limit: float) -> bool:
        """Wait for more bytes; False at end of stream."""
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        if self.eof:
            return False
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(limit):
                await self._waiter
        except TimeoutError:
            raise UpstreamTimeout("read timed out") from None
        finally:
            self._waiter = None
        return bool(self.buffer) or not self.eof

    def take(self, size: int | None = None) -> bytes:
        if size is None or size >= len(self.buffer):
            data = bytes(self.buffer)
            self.buffer.clear()
        else:
            data = bytes(self.buffer[:size])
            del self.buffer[:size]
        return data


class UpstreamResponse:
    """Status and headers as received; `body()` streams the (decoded-from-chunked, raw-coded) bytes."""

    def __init__(
        self,
        pool: UpstreamPool,
        connection: _Connection,
        status: int,
        headers: Headers,
        framing: str,
        length: int,
        keep_alive: bool,
    ) -> None:
        self.status = status
        self.headers = headers
        self._pool = pool
        self._connection: _Connection | None = connection
        self._framing = framing  # "none", "length", "chunked", "close"
        self._length = length
        self._keep_alive = keep_alive

    def buffered_body(self) -> bytes | None:
        """The whole body if already here (none, or all of a Content-Length body), else None."""
        connection = self._connection
        if (
            connection is None
            or self._framing not in ("none", "length")
            or len(connection.buffer) < self._length
        ):
            return None
        data = connection.take(self._length) if self._length else b""
        self._finish()
        return data

    async def body(self) -> AsyncIterator[bytes]:
        connection = self._connection
        assert connection is not None, "body() read twice"
        timeout = self._pool.timeout
        if self._framing == "length":
            remaining = self._length
            while remaining:
                if not connection.buffer and not await connection.fill(timeout):
                    raise UpstreamError("upstream closed before the end of the body")
                chunk = connection.take(remaining)
                remaining -= len(chunk)
                yield chunk
        elif self._framing == "chunked":
            async for chunk in self._chunks(connection, timeout):
                yield chunk
        elif self._framing == "close":
            while True:
                if connection.buffer:
                    yield connection.take()
                elif not await connection.fill(timeout):
                    break
        self._finish()

    async def _chunks(self, connection: _Connection, limit: float) -> AsyncIterator[bytes]:
        while True:
            line = await _read_line(connection, limit)
            match = _CHUNK_SIZE.fullmatch(line)
            if match is None:
                raise UpstreamError("bad chunk size line")
            size = int(match.group(1), 16)
            if size == 0:
                while await _read_line(connection, limit):  # trailers: read and dropped
                    pass
                return
            while size:
                if not connection.buffer and not await connection.fill(limit):
                    raise UpstreamError("upstream closed inside a chunk")
                chunk = connection.take(size)
                size -= len(chunk)
                yield chunk
            if await _read_line(connection, limit) != b"":
                raise UpstreamError("chunk not followed by CRLF")

    def _finish(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._keep_alive and self._framing != "close" and connection.reusable:
            self._pool.release(connection)
        else:
            self._pool.discard(connection)

    def close(self) -> None:
        """Give the connection back: reused when the body was read to the end, dropped otherwise."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.discard(connection)


class UpstreamPool:
    """Keep-alive connections to one host:port, at most `max_connections` open at once."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        host_header: bytes,
        max_connections: int = 32,
        connect_timeout: float = 2.0,
        timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.host_header = host_header
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._open = 0

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def release(self, connection: _Connection) -> None:
        self._idle.append(connection)
        self._slots.release()

    def discard(self, connection: _Connection) -> None:
        connection.close()
        self._open -= 1
        self._slots.release()

    async def _acquire(self) -> tuple[_Connection, bool]:
        """A connection (idle first, newest first) and whether it was used before."""
        if self._slots.locked():  # only then is there a wait to bound (a timer per request is not free)
            try:
                async with asyncio.timeout(self.timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise UpstreamTimeout("no upstream connection free in time") from None
        else:
            await self._slots.acquire()  # a free slot: taken at once, without yielding
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable:
                return connection, True
            connection.close()
            self._open -= 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await asyncio.get_running_loop().create_connection(
                    _Connection, self.host, self.port
                )
        except TimeoutError:
            self._slots.release()
            raise UpstreamTimeout("connect timed out") from None
        except OSError as exc:
            self._slots.release()
            raise UpstreamError(f"connect failed: {exc.strerror or exc}") from None
        self._open += 1
        return connection, False

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes | AsyncIterator[bytes] | None,
    ) -> UpstreamResponse:
        """Send one request and read the response head. Raises UpstreamError / UpstreamTimeout.

        `headers` must hold no Host, Content-Length, Transfer-Encoding or Connection: framing is ours.
        """
        head = b"".join(
            [method, b" ", target, b" HTTP/1.1\r\nhost: ", self.host_header, b"\r\n",
             *(b"%s: %s\r\n" % pair for pair in headers)]
        )  # fmt: skip
        if body is None:
            head += (
                b"\r\n"
                if method in (b"GET", b"HEAD", b"OPTIONS", b"DELETE")
                else b"content-length: 0\r\n\r\n"
            )
        elif isinstance(body, bytes):
            head += b"content-length: %d\r\n\r\n" % len(body)
        else:
            head += b"transfer-encoding: chunked\r\n\r\n"
        retry = isinstance(body, bytes | None) and method in _IDEMPOTENT
        while True:
            connection, reused = await self._acquire()
            try:
                if isinstance(body, bytes | None):
                    await connection.write(head + body if body else head, self.timeout)
                else:
                    await connection.write(head, self.timeout)
                    async for piece in body:
                        if piece:
                            await connection.write(b"%x\r\n%s\r\n" % (len(piece), piece), self.timeout)
                    await connection.write(b"0\r\n\r\n", self.timeout)
                return await self._read_head(connection, method)
            except _StaleConnection:
                self.discard(connection)
                if not (reused and retry):
                    raise UpstreamError("upstream closed the connection without answering") from None
                retry = False  # once, on a fresh connection
            except BaseException:
                self.discard(connection)
                raise

    async def _read_head(self, connection: _Connection, method: bytes) -> UpstreamResponse:
        while True:
            end = connection.buffer.find(b"\r\n\r\n")
            while end < 0:
                if len(connection.buffer) > _MAX_HEAD:
                    raise UpstreamError("response head too large")
                if not await connection.fill(self.timeout):
                    if not connection.buffer:
                        raise _StaleConnection
                    raise UpstreamError("upstream closed inside the response head")
                end = connection.buffer.find(b"\r\n\r\n")
            head = connection.take(end + 4)[:-4]
            lines = head.split(b"\r\n")
            match = _STATUS_LINE.fullmatch(lines[0])
            if match is None:
                raise UpstreamError("bad status line")
            status = int(match.group(2))
            headers = _parse_headers(lines[1:])
            if 100 <= status < 200:
                if status == 101:
                    raise UpstreamError("upstream switched protocols: not proxied")
                continue  # 100 Continue, 103 Early Hints: interim, dropped
            break
        keep_alive = match.group(1) == b"1"
        length = 0
        lengths: set[bytes] = set()
        transfer: list[bytes] = []
        for name, value in headers:
            if name == b"connection":
                tokens = {token.strip().lower() for token in value.split(b",")}
                if b"close" in tokens:
                    keep_alive = False
            elif name == b"content-length":
                lengths.update(part.strip() for part in value.split(b","))
            elif name == b"transfer-encoding":
                transfer.extend(token.strip().lower() for token in value.split(b","))
        if method == b"HEAD" or status in (204, 304):
            framing = "none"
        elif transfer:
            if transfer != [b"chunked"]:
                raise UpstreamError("unsupported transfer coding")
            framing = "chunked"
        elif lengths:
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise UpstreamError("ambiguous Content-Length")
            length = int(next(iter(lengths)))
            framing = "length" if length else "none"
        else:
            framing = "close"
        return UpstreamResponse(self, connection, status, headers, framing, length, keep_alive)


class _StaleConnection(Exception):
    """The upstream closed the connection before a single byte of the response."""


def _parse_headers(lines: list[bytes]) -> Headers:
    headers: Headers = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name) or b"\n" in line or b"\r" in line or b"\x00" in line:
            # A bare LF, a space before the colon, obsolete folding (a line starting with SP/HTAB):
            # RFC 9112 §5 lets a recipient reject them, and a proxy must, or it may frame differently.
            raise UpstreamError("malformed response header")
        headers.append((name.lower(), value.strip(b" \t")))
    return headers


async def _read_line(connection: _Connection, limit: float) -> bytes:
    while True:
        end = connection.buffer.find(b"\r\n")
        if end >= 0:
            line = connection.take(end + 2)[:-2]
            return line
        if len(connection.buffer) > _MAX_HEAD:
            raise UpstreamError("line too long")
        if not await connection.fill(limit):
            raise UpstreamError("upstream closed mid-line")
