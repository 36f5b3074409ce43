"""The ambassador: a reverse proxy deployed beside one service, checking purpose tokens for it.

    exchange ambassador --listen 0.0.0.0:8443 --upstream http://127.0.0.1:8000 \\
        --issuer https://exchange.example --audience payments --routes routes.toml

Per request: the shared access decision (exchange/verify/access.py: canonical method and path, the
route table, the bearer token, offline verification); the header rules (exchange/forwarding.py:
identity and forwarding headers are ours in every spelling, overrides dropped, `Connection` may not
name end-to-end headers); the body read under a deadline (held whole up to `buffer_bytes` before an
upstream connection is taken, so a slow upload cannot starve the pool); then the request to the
upstream over our own lean HTTP/1.1 pool (exchange/upstream.py) and the response streamed back.
Refusals are the one RFC 6750 shape from exchange.verify.bearer; the upstream never sees them.
Upstream failures are 502 (unreachable or broken) or 504 (timed out).

Inside a trust domain (`--txn-trust-domain`), it also checks the `Txn-Token` header (draft-ietf-oauth-
transaction-tokens-10 §12: exactly one token, typ txntoken+jwt, signature, aud = the trust domain, exp;
per `--txn-routes`, whose purposes are Txn-Token scopes, or `--txn-scope`, or any scope), adds
`X-Purpose-Txn-Claims` (the verified claims as ASCII JSON: txn, req_wl, tctx, rctx, ...) and forwards
the `Txn-Token` header itself unmodified (§12.2). Without `--audience` it checks Txn-Tokens alone.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec
import structlog

from exchange.forwarding import (
    Network,
    connection_problem,
    host_problem,
    parse_networks,
    response_headers,
    upstream_headers,
)
from exchange.logging import RequestLine, configure_logging
from exchange.placement import PlacementConfig, build_txn_verifier, build_verifier, serve
from exchange.upstream import UpstreamError, UpstreamPool, UpstreamResponse, UpstreamTimeout
from exchange.verify.asgi import Receive, Scope, Send, check_scope, check_txn_scope, send_refusal
from exchange.verify.bearer import Refusal, non_canonical
from exchange.verify.claims import VerifiedClaims
from exchange.verify.routes import RouteTable
from exchange.verify.txn import TxnToken, TxnTokenVerifier
from exchange.verify.verifier import PurposeTokenVerifier

log = structlog.get_logger("exchange.ambassador")
# The canonical line per request, on the hot path: the same line for a fraction of the cost.
_line: Final = RequestLine("exchange.ambassador")

CONFIG_ENV: Final = "PURPOSE_AMBASSADOR_CONFIG"


class AmbassadorConfig(PlacementConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything `app_from_env` needs: the CLI serialises it for the server's worker processes."""

    upstream: str
    connect_timeout: float = 2.0
    timeout: float = 30.0
    max_connections: int = 32
    health_path: str = "/.ambassador/health"
    # Peers (CIDR blocks) whose Forwarded / X-Forwarded-* headers are kept and extended.
    trusted_proxies: tuple[str, ...] = ()
    # The whole request body must arrive within this many seconds.
    body_timeout: float = 30.0
    # Bodies up to this size are read whole before an upstream connection is taken.
    buffer_bytes: int = 1024 * 1024


class _BodyTimeout(Exception):
    """The client did not send its body within the deadline."""


class Ambassador:
    """The proxy as an ASGI app. One upstream pool per event loop, opened at lifespan startup."""

    def __init__(
        self,
        *,
        upstream: str,
        verifier: PurposeTokenVerifier | None,
        routes: RouteTable,
        txn_verifier: TxnTokenVerifier | None = None,
        txn_routes: RouteTable | None = None,
        connect_timeout: float = 2.0,
        timeout: float = 30.0,
        max_connections: int = 32,
        health_path: str = "/.ambassador/health",
        trusted_proxies: tuple[Network, ...] = (),
        body_timeout: float = 30.0,
        buffer_bytes: int = 1024 * 1024,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"upstream must be an http base URL without query: {upstream!r}")
        self.upstream = upstream.rstrip("/")
        self._upstream_base_path = parts.path.rstrip("/").encode("ascii")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._host_header = parts.netloc.encode("ascii")
        if verifier is None and txn_verifier is None:
            raise ValueError("the ambassador needs a purpose-token verifier, a Txn-Token verifier or both")
        self.verifier = verifier
        self.routes = routes
        self.txn_verifier = txn_verifier
        self.txn_routes = txn_routes if txn_routes is not None else RouteTable.single(None)
        self.health_path = health_path
        self.trusted_proxies = trusted_proxies
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._max_connections = max_connections
        self._body_timeout = body_timeout
        self._buffer_bytes = buffer_bytes
        self._pool: UpstreamPool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None

    async def aclose(self) -> None:
        """Close the upstream pool (lifespan shutdown does this when the server runs one)."""
        pool, self._pool = self._pool, None
        self._pool_loop = None
        if pool is not None:
            await pool.aclose()
        close = getattr(getattr(self.verifier, "replay_guard", None), "close", None)
        if close is not None:
            await close()

    def _upstream(self) -> UpstreamPool:
        # Pooled connections belong to the event loop that opened them: a server that skipped
        # lifespan, or an app reused in a new loop, gets a fresh pool.
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool_loop is not loop:
            self._pool = UpstreamPool(
                self._host, self._port, host_header=self._host_header, max_connections=self._max_connections,
                connect_timeout=self._connect_timeout, timeout=self._timeout,
            )  # fmt: skip
            self._pool_loop = loop
        return self._pool

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
                # Warm the JWKS; a failure is retried per request.
                if self.verifier is not None:
                    await self.verifier.refresh_keys()
                if self.txn_verifier is not None:
                    await self.txn_verifier.refresh_keys()
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
        txn: TxnToken | None = None
        refusal: Refusal | None = None
        problem = connection_problem(scope["headers"]) or host_problem(
            scope["headers"], scope.get("http_version", "1.1")
        )
        if problem is not None:
            refusal = non_canonical(problem)
        elif self.verifier is not None:
            claims, refusal = await check_scope(self.verifier, self.routes, scope)
        if refusal is None and self.txn_verifier is not None:
            txn, refusal = await check_txn_scope(self.txn_verifier, self.txn_routes, scope)
        if refusal is not None:
            await send_refusal(send, refusal)
            status = refusal.status
        else:
            status = await self._forward(scope, receive, send, claims, txn)
        # The one canonical line per request: identity by sub and jti, never the token.
        _line.info(
            "ambassador_request",
            method=method,
            path=path,
            status=status,
            reason=refusal.reason if refusal else None,
            sub=claims.sub if claims else None,
            jti=claims.jti if claims else None,
            purpose=claims.purpose if claims else None,
            txn=txn.claims.txn if txn else None,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, claims: VerifiedClaims | None, txn: TxnToken | None
    ) -> int:
        client = scope.get("client")
        headers = upstream_headers(
            scope["headers"], peer=client[0] if client else None, scheme=scope.get("scheme", "http"),
            trusted=self.trusted_proxies, claims=claims, txn=txn,
        )  # fmt: skip
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("ascii")
        target = self._upstream_base_path + raw_path.split(b"?", 1)[0]
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        deadline = asyncio.get_running_loop().time() + self._body_timeout
        try:
            body = await self._body(scope, receive, deadline)
            response = await self._upstream().request(scope["method"].encode("ascii"), target, headers, body)
        except _BodyTimeout:
            log.warning("ambassador_body_timeout", path=scope["path"])
            await _send_json(send, 408, {"error": "request_timeout"}, close=True)
            return 408
        except UpstreamTimeout as exc:
            log.warning("ambassador_upstream_timeout", error=str(exc), upstream=self.upstream)
            await _send_json(send, 504, {"error": "upstream_timeout"})
            return 504
        except UpstreamError as exc:
            log.warning("ambassador_upstream_error", error=str(exc), upstream=self.upstream)
            await _send_json(send, 502, {"error": "upstream_unavailable"})
            return 502
        return await self._relay(scope, send, response)

    async def _relay(self, scope: Scope, send: Send, response: UpstreamResponse) -> int:
        try:
            await send(
                {"type": "http.response.start", "status": response.status,
                 "headers": response_headers(response.headers)}
            )  # fmt: skip
            whole = response.buffered_body()
            if whole is not None:
                # The common small answer, already read whole: one send, not two.
                body = whole if scope["method"] != "HEAD" else b""
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return response.status
            # Raw bytes, streamed as they arrive: the body is relayed as encoded (gzip stays gzip).
            async for chunk in response.body():
                if scope["method"] != "HEAD":
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except UpstreamError as exc:
            # Too late for a 502: the status line is gone. Ending here makes the server drop the
            # connection, so the client sees a truncated response rather than a complete-looking one.
            log.warning("ambassador_upstream_broke_mid_response", error=str(exc))
        finally:
            response.close()
        return response.status

    async def _body(
        self, scope: Scope, receive: Receive, deadline: float
    ) -> bytes | AsyncIterator[bytes] | None:
        """The request body: None, all of it (up to buffer_bytes), or a stream under the deadline."""
        if not any(name in (b"content-length", b"transfer-encoding") for name, _ in scope["headers"]):
            return None
        held = bytearray()
        while True:
            message = await _receive_by(receive, deadline)
            held += message.get("body", b"")
            if not message.get("more_body", False):
                return bytes(held)
            if len(held) > self._buffer_bytes:
                return _stream(bytes(held), receive, deadline)


async def _receive_by(receive: Receive, deadline: float) -> Any:
    try:
        async with asyncio.timeout_at(deadline):
            message = await receive()
    except TimeoutError:
        raise _BodyTimeout from None
    if message["type"] == "http.disconnect":
        raise _BodyTimeout
    return message


async def _stream(first: bytes, receive: Receive, deadline: float) -> AsyncIterator[bytes]:
    yield first
    while True:
        try:
            message = await _receive_by(receive, deadline)
        except _BodyTimeout:
            raise UpstreamError("request body did not arrive in time") from None
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _send_json(send: Send, status: int, payload: dict[str, Any], *, close: bool = False) -> None:
    body = msgspec.json.encode(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_ambassador(config: AmbassadorConfig) -> Ambassador:
    """The app for `config`: key source, verifier and route table built once, here."""
    verifier, routes = build_verifier(config)
    txn_verifier, txn_routes = build_txn_verifier(config)
    return Ambassador(
        upstream=config.upstream,
        verifier=verifier,
        routes=routes,
        txn_verifier=txn_verifier,
        txn_routes=txn_routes,
        connect_timeout=config.connect_timeout,
        timeout=config.timeout,
        max_connections=config.max_connections,
        health_path=config.health_path,
        trusted_proxies=parse_networks(config.trusted_proxies),
        body_timeout=config.body_timeout,
        buffer_bytes=config.buffer_bytes,
    )


def app_from_env() -> Ambassador:
    """Factory for server worker processes: the config travels in $PURPOSE_AMBASSADOR_CONFIG."""
    configure_logging()
    return build_ambassador(msgspec.json.decode(os.environ[CONFIG_ENV], type=AmbassadorConfig))


def run(
    config: AmbassadorConfig, *, listen: str = "127.0.0.1:8081", server: str = "granian", workers: int = 1
) -> None:
    """Serve the ambassador on `listen` ("host:port") with granian (default) or uvicorn."""
    build_ambassador(config)  # fail fast in the parent on a bad routes file, key file or URL
    serve(
        "exchange.ambassador:app_from_env", CONFIG_ENV, config, listen=listen, server=server, workers=workers
    )
