"""The token endpoint, POST /token: bare ASGI, in front of litestar.

/token is the hot path. `Front` takes a request for exactly `/token` (no root_path, a valid Host, as
litestar would route it) straight to `TokenEndpoint`, before litestar's router and middleware; every
other request, and any other spelling of the path (`/token/`, `//token`), goes to the litestar app,
which mounts the same endpoint as an `@asgi` route behind its request-id middleware. Either way the
request gets the same answers: a validated X-Request-ID (bound to the log context and echoed), the
content-type check, the body limit and timeout, the strict form parse, RFC 6749 §5.2 JSON errors with
`Cache-Control: no-store` and `Pragma: no-cache`, metrics and tracing (exchange/service.py), and never
a stack trace.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, unquote, unquote_to_bytes

import msgspec
import structlog

# litestar's own Host check, so that the front refuses nothing litestar would take (and hands it what
# litestar refuses, to be refused there the same way).
from litestar._asgi.utils import is_valid_host
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from exchange.errors import InvalidClient, InvalidRequest, OAuthError, RequestTimeout, ServerError
from schemas.records import AuditRecord
from schemas.wire import (
    CLIENT_ASSERTION_TYPE_JWT,
    GRANT_TOKEN_EXCHANGE,
    TOKEN_TYPE_TXN_TOKEN,
    TXN_SUBJECT_TOKEN_TYPES,
    ErrorResponse,
    TokenRequest,
)

if TYPE_CHECKING:
    from exchange.app import Runtime
    from exchange.tracing import RequestTrace

log = structlog.get_logger("exchange.app")
_encode = msgspec.json.Encoder().encode
_FORM_FIELDS = frozenset(f for f in TokenRequest.__struct_fields__ if f not in {"audience", "resource"})
# What a caller's X-Request-ID may be: it is written to logs, the audit trail and a response header.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_NO_STORE_RAW = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
_FORM = "application/x-www-form-urlencoded"
_USE_POST = b'{"error":"invalid_request","error_description":"use POST"}'


def request_id(given: str | None) -> str:
    """The caller's X-Request-ID when it is a safe token (1-64 of `A-Za-z0-9._:-`), else a fresh one.

    Validated before anything else sees it: a header may carry any byte a server lets through (bytes
    over 0x7F, tabs, kilobytes), and this value lands in terminals, JSON logs and audit queries.
    """
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return secrets.token_hex(8)


def bind_request_id(headers: Any) -> str:
    """The request's id (from its first X-Request-ID header, validated), bound to the log context."""
    given = next((v for k, v in headers if k == b"x-request-id"), None)
    rid = request_id(None if given is None else given.decode("latin-1"))
    # Each request is its own task, but start clean anyway: no id may leak into another request.
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=rid)
    return rid


def _encodings(value: str) -> set[str]:
    """How a form may spell `value` with its reserved characters percent-encoded (either hex case)."""
    upper = quote(value, safe="")
    lower = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), upper)
    return {upper, lower}


# The URNs every request carries (grant type, token types), percent-encoded as clients send them, read
# without unquote's generic machinery (~1 µs each): a fixed table of what `_unform` would return.
_KNOWN: Final = {
    spelling: value
    for value in (
        GRANT_TOKEN_EXCHANGE,
        CLIENT_ASSERTION_TYPE_JWT,
        TOKEN_TYPE_TXN_TOKEN,
        *TXN_SUBJECT_TOKEN_TYPES,
    )
    for spelling in _encodings(value)
}


def _unform(text: str) -> str:
    # application/x-www-form-urlencoded: '+' is a space, then percent-decoding (strict UTF-8).
    known = _KNOWN.get(text)
    if known is not None:
        return known
    if "+" in text:
        text = text.replace("+", " ")
    if "%" not in text:
        return text
    # What unquote does with an all-ASCII string (its one ASCII run), without the run-splitting
    # regular expression around it (~40% of its cost): an audience URL is percent-encoded.
    return unquote_to_bytes(text).decode() if text.isascii() else unquote(text, errors="strict")


def parse_form(body: bytes, max_fields: int = 32) -> TokenRequest:
    """RFC 6749 §3.2: form-encoded, each parameter at most once (audience/resource may repeat, RFC 8693).

    What `urllib.parse.parse_qsl(keep_blank_values=False, errors="strict")` reads, without its generic
    machinery: `&`-separated pairs, a pair without `=` or with an empty value skipped, at most
    `max_fields` pairs, bad UTF-8 (raw or percent-encoded) an error rather than a silent U+FFFD.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("malformed form body") from None
    if not text:
        return TokenRequest()
    if text.count("&") >= max_fields:
        raise InvalidRequest("malformed form body")
    single: dict[str, str] = {}
    audience: list[str] = []
    resource: list[str] = []
    try:
        for pair in text.split("&"):
            raw_name, _, raw_value = pair.partition("=")
            if not raw_value:
                continue
            name, value = _unform(raw_name), _unform(raw_value)
            if name == "audience":
                audience.append(value)
            elif name == "resource":
                resource.append(value)
            elif name in _FORM_FIELDS:
                if name in single:
                    raise InvalidRequest(f"parameter {name} is repeated")
                single[name] = value
            # Unknown parameters are ignored (RFC 6749 §3.2).
    except UnicodeDecodeError:
        raise InvalidRequest("malformed form body") from None
    return TokenRequest(audience=tuple(audience), resource=tuple(resource), **single)


def error_body(exc: OAuthError) -> bytes:
    """The RFC 6749 §5.2 JSON of an error."""
    return _encode(
        ErrorResponse(
            error=exc.error,
            error_description=exc.description,
            denial=exc.denial,
            acr_values=exc.acr_values,
            max_age=exc.max_age,
        )
    )


def error_headers(exc: OAuthError) -> dict[str, str]:
    """The headers of an error answer: never cached, a Basic challenge, Retry-After, Connection: close."""
    headers = dict(NO_STORE)
    if isinstance(exc, InvalidClient) and exc.basic:
        headers["WWW-Authenticate"] = 'Basic realm="purpose-exchange"'
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, RequestTimeout):
        headers["Connection"] = "close"  # RFC 9110 §15.5.9: the rest of that request is not wanted
    return headers


def _peer(scope: Scope) -> str | None:
    """The TCP peer's address (behind a proxy: the proxy's). Forwarded headers are not trusted here."""
    client = scope.get("client")
    return None if not client else str(client[0])[:64]


class BodyDeadlines:
    """The body timeout of every request in flight on one timer, not a timer per request.

    `asyncio.timeout` per request was a Timeout object, a TimerHandle pushed on the loop's heap and
    cancelled again (~3 µs of pure Python each). Every request gets the same `seconds`, so deadlines
    come in arrival order: the oldest waiting read is the next due. One timer sleeps until that
    deadline, cancels each read whose deadline has passed (exactly what asyncio.timeout's handle would
    have done, at the same moment), and sleeps until the next one.
    """

    __slots__ = ("_expired", "_loop", "_seconds", "_timer", "_waiting")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._waiting: dict[asyncio.Task[Any], float] = {}  # insertion order: deadline order
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def read(self, receive: Receive, limit: int) -> bytes:
        """The whole body, at most `limit` bytes, within `seconds` in all (not per chunk: a client
        sending a byte a second would keep a per-chunk timer alive forever)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:  # not in a task: nothing to cancel but through asyncio.timeout
            return await _read_body(receive, limit, self._seconds)
        if loop is not self._loop:  # another loop (a test's): what the old one waited for is gone
            self._loop, self._timer = loop, None
            self._waiting.clear()
            self._expired.clear()
        deadline = loop.time() + self._seconds
        self._waiting.pop(task, None)
        self._waiting[task] = deadline
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._fire)
        try:
            return await _receive_body(receive, limit)
        except asyncio.CancelledError:
            # The cancellation is the deadline's only if the deadline sent it (a shutdown's stays one).
            if task in self._expired:
                self._expired.discard(task)
                task.uncancel()
                raise RequestTimeout("the request body did not arrive in time") from None
            raise
        finally:
            self._waiting.pop(task, None)
            self._expired.discard(task)

    def _fire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        waiting = self._waiting
        while waiting:
            task, deadline = next(iter(waiting.items()))
            if deadline > now:
                self._timer = loop.call_at(deadline, self._fire)
                return
            del waiting[task]
            # Only a task suspended inside `read` is registered, so the CancelledError surfaces there.
            self._expired.add(task)
            task.cancel()


async def _read_body(receive: Receive, limit: int, seconds: float) -> bytes:
    try:
        async with asyncio.timeout(seconds):
            return await _receive_body(receive, limit)
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None


async def _receive_body(receive: Receive, limit: int) -> bytes:
    message: Any = await receive()
    if message["type"] == "http.disconnect":
        raise InvalidRequest("client disconnected")
    body: bytes = message.get("body", b"")
    if len(body) > limit:
        raise InvalidRequest("request body too large")
    if not message.get("more_body", False):
        return body  # the usual case: one message
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise InvalidRequest("request body too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class TokenEndpoint:
    """POST /token. `runtime` is set by the app's lifespan once everything is built."""

    __slots__ = ("_clock", "_deadlines", "_max_body", "runtime")

    def __init__(self, *, max_body_bytes: int, body_timeout: float, clock: Callable[[], float]) -> None:
        self._max_body = max_body_bytes
        self._deadlines = BodyDeadlines(body_timeout)
        self._clock = clock
        self.runtime: Runtime | None = None

    async def front(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The whole request, request id included (what `request_id_middleware` does for litestar)."""
        rid = bind_request_id(scope["headers"])
        await self.handle(scope, receive, send, rid, (b"x-request-id", rid.encode("ascii")))

    async def handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        rid: str,
        echo: tuple[bytes, bytes] | None = None,
    ) -> None:
        """Answer one request whose id is `rid` (validated); `echo`: the X-Request-ID header to add."""
        tail = [] if echo is None else [echo]
        try:
            if scope.get("method") != "POST":
                await _send(send, 405, _USE_POST, [(b"allow", b"POST"), *tail])
                return
            runtime = self.runtime
            assert runtime is not None, "the lifespan has not started"
            # Header names arrive lower-cased (ASGI spec). A repeated Content-Type or Authorization is
            # refused: which one counts would depend on who reads the request (a proxy, us).
            ctype = authorization = None
            repeated = False
            for name, value in scope["headers"]:
                if name == b"content-type":
                    repeated |= ctype is not None
                    ctype = value
                elif name == b"authorization":
                    repeated |= authorization is not None
                    authorization = value
            try:
                if repeated:
                    raise InvalidRequest("the Content-Type or Authorization header is repeated")
                if ctype is None or ctype.decode("latin-1").split(";", 1)[0].strip().lower() != _FORM:
                    raise InvalidRequest("the body must be application/x-www-form-urlencoded")
                body = await self._deadlines.read(receive, self._max_body)
                form = parse_form(body)
            except OAuthError as exc:  # refused before the exchange, so before any client authenticated
                log.info("http_request", method="POST", path="/token", status=exc.status, error=exc.error,
                         error_description=exc.description, request_id=rid)  # fmt: skip
                runtime.tally.count(
                    AuditRecord(
                        time=self._clock(), request_id=rid, decision="denied", error=exc.error,
                        reason=exc.reason,
                    ),
                    _peer(scope),
                )  # fmt: skip
                await _send_error(send, exc, tail)
                return
            trace: RequestTrace | None = None
            if runtime.tracing is not None:
                # latin-1 is how HTTP header bytes map to text.
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
                trace = runtime.tracing.start(headers)
                tail.append(trace.response_header)
            try:
                answer = await runtime.exchange.handle(
                    form,
                    None if authorization is None else authorization.decode("latin-1"),
                    rid,
                    source=_peer(scope),
                    trace=trace,
                )
            except OAuthError as exc:
                await _send_error(send, exc, tail)
                return
            await _send(send, 200, _encode(answer), [*_NO_STORE_RAW, *tail])
        except Exception as exc:  # never a stack trace, never an HTML page
            log.error("unhandled_error", error=exc.__class__.__name__)
            await _send_error(send, ServerError("internal error"), tail[:1] if echo is not None else [])


class Front:
    """The ASGI app the server runs: POST /token to the endpoint, everything else to litestar."""

    __slots__ = ("_app", "_endpoint")

    def __init__(self, app: ASGIApp, endpoint: TokenEndpoint) -> None:
        self._app = app
        self._endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope["path"] == "/token" and not scope.get("root_path"):
            host = next((v for k, v in scope["headers"] if k == b"host"), None)
            if host is None or is_valid_host(host):
                await self._endpoint.front(scope, receive, send)
                return
        await self._app(scope, receive, send)


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    start: Any = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_error(send: Send, exc: OAuthError, tail: list[tuple[bytes, bytes]]) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error_headers(exc).items()]
    await _send(send, exc.status, error_body(exc), [*headers, *tail])
