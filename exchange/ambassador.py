"""The ambassador: a reverse proxy deployed beside one service, checking purpose tokens for it.

    exchange ambassador --listen 0.0.0.0:8443 --upstream http://127.0.0.1:8000 \\
        --issuer https://exchange.example --audience payments --routes routes.toml

Per request: match the route table (method + path prefix -> purpose, any token, or open); verify the
bearer token offline with `exchange.verify`; drop every client-sent `X-Purpose-*` header (so a caller can
never forge identity, even on open routes); add `X-Purpose-Sub`, `X-Purpose-Scope` and
`X-Purpose-Claims` (the verified claims as ASCII JSON); stream the request to the upstream and the
response back. Refusals are RFC 6750 answers from the ambassador itself; the upstream never sees them.
Upstream failures are 502 (unreachable) or 504 (timed out), with bounded connect/read/write/pool timeouts.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final
from urllib.parse import quote, urlsplit

import httpx
import msgspec
import structlog

from exchange.logging import configure_logging
from exchange.verify.asgi import Receive, Scope, Send, check_scope, send_refusal
from exchange.verify.bearer import Refusal
from exchange.verify.claims import VerifiedClaims
from exchange.verify.jwks import key_source
from exchange.verify.routes import RouteTable
from exchange.verify.verifier import PurposeTokenVerifier

log = structlog.get_logger("exchange.ambassador")

CONFIG_ENV: Final = "PURPOSE_AMBASSADOR_CONFIG"
IDENTITY_PREFIX: Final = b"x-purpose-"
_POOL_SHARD: Final = 4  # upstream connections per httpcore pool
# RFC 9110 §7.6.1 hop-by-hop fields, plus Host (the upstream's own) and the proxy-only ones.
_HOP_BY_HOP: Final = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection",
        b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host",
    }
)  # fmt: skip


class AmbassadorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything `app_from_env` needs: the CLI serialises it for the server's worker processes."""

    upstream: str
    issuer: str
    audience: str
    jwks_uri: str | None = None
    jwks_file: str | None = None
    routes_file: str | None = None
    # Used when there is no routes file: every request needs a token of this purpose (None: any).
    purpose: str | None = None
    connect_timeout: float = 2.0
    timeout: float = 30.0
    max_connections: int = 32
    health_path: str = "/.ambassador/health"
    # Plain http to a non-loopback JWKS host: a private network only (see JWKSCache).
    allow_insecure_http: bool = False


class Ambassador:
    """The proxy as an ASGI app. One upstream connection pool per event loop, opened at lifespan startup."""

    def __init__(
        self,
        *,
        upstream: str,
        verifier: PurposeTokenVerifier,
        routes: RouteTable,
        connect_timeout: float = 2.0,
        timeout: float = 30.0,
        max_connections: int = 32,
        health_path: str = "/.ambassador/health",
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"upstream must be an http(s) base URL without query: {upstream!r}")
        self.upstream = upstream.rstrip("/")
        self._upstream_base_path = parts.path.rstrip("/")
        self.verifier = verifier
        self.routes = routes
        self.health_path = health_path
        # Waiting for a pooled connection is queueing, bounded like the rest of the exchange with the
        # upstream; connecting gets its own, shorter bound so a dead upstream is noticed fast.
        self._timeout_extension = httpx.Timeout(timeout, connect=connect_timeout, pool=timeout).as_dict()
        # httpcore's pool slows down sharply with many connections in one pool (measured: 32 requests
        # in flight on one 32-connection pool ran at a quarter of the rate of 8 pools of 4), so the
        # connections are spread over small pools taken in turn. The total stays max_connections.
        shard = min(_POOL_SHARD, max_connections)
        self._pool_limits = [
            httpx.Limits(max_connections=size, max_keepalive_connections=size)
            for size in _split(max_connections, shard)
        ]
        self._upstream_url = httpx.URL(self.upstream)
        self._transports: list[httpx.AsyncHTTPTransport] = []
        self._next_transport: Iterator[httpx.AsyncHTTPTransport] = iter(())
        self._transport_loop: asyncio.AbstractEventLoop | None = None

    async def aclose(self) -> None:
        """Close the upstream connection pool (lifespan shutdown does this when the server runs one)."""
        transports, self._transports = self._transports, []
        self._transport_loop = None
        for transport in transports:
            await transport.aclose()

    def _upstream(self) -> httpx.AsyncHTTPTransport:
        # The transport, not an httpx.AsyncClient: a client keeps a cookie jar, so one caller's
        # Set-Cookie would be replayed upstream on every later caller's request; it would also follow
        # redirects and read proxy settings from the environment. A proxy wants none of that.
        # Pooled connections belong to the event loop that opened them: a server that skipped
        # lifespan, or an app reused in a new loop, gets a fresh pool.
        loop = asyncio.get_running_loop()
        if not self._transports or self._transport_loop is not loop:
            self._transports = [
                httpx.AsyncHTTPTransport(limits=limits, retries=0) for limits in self._pool_limits
            ]
            self._next_transport = itertools.cycle(self._transports)
            self._transport_loop = loop
        return next(self._next_transport)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # not proxied

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._upstream()
                await self.verifier.refresh_keys()  # warm the JWKS; a failure is retried per request
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        path: str = scope["path"]
        if path == self.health_path and method in ("GET", "HEAD"):
            await _send_json(send, 200, {"status": "ok"})
            return
        claims: VerifiedClaims | None = None
        refusal: Refusal | None
        # A non-canonical target is refused there: the upstream might resolve "/open/../admin" to
        # "/admin" after we matched "/open".
        claims, refusal = await check_scope(self.verifier, self.routes, scope)
        if refusal is not None:
            await send_refusal(send, refusal)
            status = refusal.status
        else:
            status = await self._forward(scope, receive, send, claims)
        # The one canonical line per request: identity by sub and jti, never the token.
        log.info(
            "ambassador_request",
            method=method,
            path=path,
            status=status,
            reason=refusal.reason if refusal else None,
            sub=claims.sub if claims else None,
            jti=claims.jti if claims else None,
            purpose=claims.purpose if claims else None,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, claims: VerifiedClaims | None
    ) -> int:
        headers, has_body = _upstream_headers(scope, claims)
        raw_path: bytes = scope.get("raw_path") or quote(scope["path"]).encode("ascii")
        target = self._upstream_base_path.encode("ascii") + raw_path
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        request = httpx.Request(
            scope["method"],
            self._upstream_url.copy_with(raw_path=target),
            headers=headers,
            content=_request_body(receive) if has_body else None,
            extensions={"timeout": self._timeout_extension},
        )
        try:
            response = await self._upstream().handle_async_request(request)
        except httpx.TimeoutException as exc:
            log.warning("ambassador_upstream_timeout", error=type(exc).__name__, upstream=self.upstream)
            await _send_json(send, 504, {"error": "upstream_timeout"})
            return 504
        except httpx.HTTPError as exc:
            log.warning("ambassador_upstream_error", error=type(exc).__name__, upstream=self.upstream)
            await _send_json(send, 502, {"error": "upstream_unavailable"})
            return 502
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": _response_headers(response.headers.raw),
                }
            )
            if scope["method"] != "HEAD":
                # Raw bytes: the body is relayed as encoded by the upstream (gzip stays gzip).
                async for chunk in response.aiter_raw():
                    if chunk:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except httpx.HTTPError as exc:
            # Too late for a 502: the status line is gone. Ending here makes the server drop the
            # connection, so the client sees a truncated response rather than a complete-looking one.
            log.warning("ambassador_upstream_broke_mid_response", error=type(exc).__name__)
        finally:
            await response.aclose()
        return response.status_code


def _split(total: int, part: int) -> list[int]:
    """`total` as a list of sizes of at most `part` each: 10, 4 -> [4, 4, 2]."""
    return [part] * (total // part) + ([total % part] if total % part else [])


def _upstream_headers(scope: Scope, claims: VerifiedClaims | None) -> tuple[list[tuple[bytes, bytes]], bool]:
    headers: list[tuple[bytes, bytes]] = []
    has_body = False
    forwarded_for = original_host = b""
    connection_tokens: set[bytes] = set()
    for name, value in scope.get("headers", ()):
        lowered = name.lower()
        if lowered == b"connection":
            connection_tokens.update(token.strip().lower() for token in value.split(b","))
        elif lowered == b"host":
            original_host = value
    for name, value in scope.get("headers", ()):
        lowered = name.lower()
        if lowered in (b"content-length", b"transfer-encoding"):
            has_body = True
        if lowered.startswith(IDENTITY_PREFIX) or lowered in _HOP_BY_HOP or lowered in connection_tokens:
            continue
        if lowered == b"x-forwarded-for":
            forwarded_for = value + b", "
            continue
        if lowered in (b"x-forwarded-proto", b"x-forwarded-host"):
            continue  # ours replace the client's: only the hop we saw is known to be true
        headers.append((name, value))
    client = scope.get("client")
    if client:
        headers.append((b"x-forwarded-for", forwarded_for + str(client[0]).encode("ascii")))
    headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode("ascii")))
    if original_host:
        headers.append((b"x-forwarded-host", original_host))
    if claims is not None:
        headers.append((b"x-purpose-sub", _header_safe(claims.sub)))
        headers.append((b"x-purpose-scope", _header_safe(claims.purpose)))
        # ensure_ascii: a header value must not carry raw UTF-8 or control characters.
        encoded = json.dumps(claims.to_dict(), ensure_ascii=True, separators=(",", ":"))
        headers.append((b"x-purpose-claims", encoded.encode("ascii")))
    return headers, has_body


def _header_safe(value: str) -> bytes:
    # Printable ASCII passes as is; anything else is percent-encoded so no byte can split a header.
    if value.isascii() and value.isprintable():
        return value.encode("ascii")
    return quote(value, safe="").encode("ascii")


def _response_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    connection_tokens = {
        token.strip().lower()
        for name, value in raw
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    return [
        (name, value)
        for name, value in raw
        if name.lower() not in _HOP_BY_HOP and name.lower() not in connection_tokens
    ]


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = msgspec.json.encode(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_ambassador(config: AmbassadorConfig) -> Ambassador:
    """The app for `config`: key source, verifier and route table built once, here."""
    keys = key_source(
        jwks_file=config.jwks_file,
        jwks_uri=config.jwks_uri,
        issuer=config.issuer,
        allow_insecure_http=config.allow_insecure_http,
    )
    verifier = PurposeTokenVerifier(issuer=config.issuer, audience=config.audience, jwks=keys)
    routes = (
        RouteTable.from_file(config.routes_file) if config.routes_file else RouteTable.single(config.purpose)
    )
    return Ambassador(
        upstream=config.upstream,
        verifier=verifier,
        routes=routes,
        connect_timeout=config.connect_timeout,
        timeout=config.timeout,
        max_connections=config.max_connections,
        health_path=config.health_path,
    )


def app_from_env() -> Ambassador:
    """Factory for server worker processes: the config travels in $PURPOSE_AMBASSADOR_CONFIG."""
    configure_logging()
    return build_ambassador(msgspec.json.decode(os.environ[CONFIG_ENV], type=AmbassadorConfig))


def run(
    config: AmbassadorConfig, *, listen: str = "127.0.0.1:8081", server: str = "granian", workers: int = 1
) -> None:
    """Serve the ambassador on `listen` ("host:port") with granian (default) or uvicorn."""
    from exchange.listen import ensure_free, split_host_port

    host, port = split_host_port(listen, what="--listen")
    build_ambassador(config)  # fail fast in the parent on a bad routes file, key file or URL
    ensure_free(host, port, what="--listen")  # PortInUse: granian would share it silently
    # Worker processes rebuild the app from the environment: no pickling, same path for both servers.
    os.environ[CONFIG_ENV] = msgspec.json.encode(config).decode()
    if server == "uvicorn":
        import uvicorn

        uvicorn.run(
            "exchange.ambassador:app_from_env", factory=True, host=host, port=port, workers=workers,
            log_level="warning", access_log=False, lifespan="on",
        )  # fmt: skip
        return
    from granian import Granian
    from granian.constants import Interfaces

    from exchange.logging import granian_log_config

    Granian(
        "exchange.ambassador:app_from_env", factory=True, interface=Interfaces.ASGI, address=host,
        port=port, workers=workers, log_access=False, log_dictconfig=granian_log_config(),
    ).serve()  # fmt: skip
