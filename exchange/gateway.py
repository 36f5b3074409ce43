"""The gateway: a forward-auth endpoint for the proxy in front of everything.

    exchange gateway --listen 127.0.0.1:8082 --proxy nginx \\
        --issuer https://exchange.example --audience payments --routes routes.toml

The proxy (nginx `auth_request`, Traefik `ForwardAuth`, Envoy `ext_authz` over HTTP, Caddy
`forward_auth`) asks us about each request before serving it. We read the original method and URI
from where that proxy puts them, run the same access decision as every other placement
(exchange/verify/access.py: canonical method and path, the route table, the bearer token), and answer
200 with the identity headers (exchange/forwarding.py: the proxy copies them to the upstream) or the
one refusal shape (401/403 with the RFC 6750 challenge; 400 for a non-canonical target; 404 unrouted).
A check whose original request carries a header the upstream could take for ours (an `x-purpose-*`
header, any `_` name, a method-override or rewrite header) is refused (400): unlike the ambassador we
cannot drop it, the proxy forwards it (exchange/forwarding.py `forged_header`).

Inside a trust domain (`--txn-trust-domain`) the check also needs a valid `Txn-Token` header (draft-
ietf-oauth-transaction-tokens-10 §12), answered in the same shape, and the 200 carries
`X-Purpose-Txn-Claims`; the proxy passes the `Txn-Token` header itself on to the upstream unmodified.

Where each proxy puts the original request (exactly one value each, or the check is refused):
    nginx            X-Original-Method, X-Original-URI (set in the config: $request_method, $request_uri)
    traefik, caddy   X-Forwarded-Method, X-Forwarded-Uri (set by the proxy itself)
    envoy            the check request's own method, and its path after `envoy_prefix`

For Envoy, a 200 also names the identity headers it does not carry in `x-envoy-auth-headers-to-remove`
(Envoy removes those from the upstream request after setting ours): on an open route, all of them.
"""

from __future__ import annotations

import os
import time
from typing import Final, Literal
from urllib.parse import unquote

import msgspec
import structlog

from exchange.forwarding import IDENTITY_HEADERS, forged_header, identity_headers, txn_identity_headers
from exchange.logging import RequestLine, configure_logging
from exchange.placement import PlacementConfig, build_txn_verifier, build_verifier, serve
from exchange.verify.access import TXN_TOKEN, check_request, check_txn_request
from exchange.verify.asgi import Receive, Scope, Send, header_values, send_refusal
from exchange.verify.bearer import Refusal, non_canonical
from exchange.verify.routes import RouteTable, path_problem
from exchange.verify.txn import TxnToken, TxnTokenVerifier
from exchange.verify.verifier import PurposeTokenVerifier

log = structlog.get_logger("exchange.gateway")
# The canonical line per request, on the hot path: the same line for a fraction of the cost.
_line: Final = RequestLine("exchange.gateway")

CONFIG_ENV: Final = "PURPOSE_GATEWAY_CONFIG"
Proxy = Literal["nginx", "traefik", "caddy", "envoy"]
PROXIES: Final = ("nginx", "traefik", "caddy", "envoy")
_ORIGINAL: Final[dict[str, tuple[bytes, bytes]]] = {
    "nginx": (b"x-original-method", b"x-original-uri"),
    "traefik": (b"x-forwarded-method", b"x-forwarded-uri"),
    "caddy": (b"x-forwarded-method", b"x-forwarded-uri"),
}
# Envoy ext_authz (HTTP service): on a 200, the request headers it names are removed before upstream.
ENVOY_REMOVE: Final = b"x-envoy-auth-headers-to-remove"
_ALLOWED_HEAD: Final = [(b"content-length", b"0"), (b"cache-control", b"no-store")]


class GatewayConfig(PlacementConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything `app_from_env` needs: the CLI serialises it for the server's worker processes."""

    proxy: Proxy = "nginx"
    # Envoy's http_service path_prefix: the check request's path is this plus the original path.
    envoy_prefix: str = "/check"
    health_path: str = "/.gateway/health"


class Gateway:
    """The forward-auth endpoint as an ASGI app."""

    def __init__(
        self,
        *,
        verifier: PurposeTokenVerifier | None,
        routes: RouteTable,
        txn_verifier: TxnTokenVerifier | None = None,
        txn_routes: RouteTable | None = None,
        proxy: Proxy = "nginx",
        envoy_prefix: str = "/check",
        health_path: str = "/.gateway/health",
    ) -> None:
        if proxy not in PROXIES:
            raise ValueError(f"proxy must be one of {', '.join(PROXIES)}, not {proxy!r}")
        if verifier is None and txn_verifier is None:
            raise ValueError("the gateway needs a purpose-token verifier, a Txn-Token verifier or both")
        self.verifier = verifier
        self.routes = routes
        self.txn_verifier = txn_verifier
        self.txn_routes = txn_routes if txn_routes is not None else RouteTable.single(None)
        self.proxy = proxy
        self._envoy_prefix = envoy_prefix.rstrip("/").encode("ascii")
        self.health_path = health_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    # Warm the JWKS; a failure is retried per check.
                    if self.verifier is not None:
                        await self.verifier.refresh_keys()
                    if self.txn_verifier is not None:
                        await self.txn_verifier.refresh_keys()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    close = getattr(getattr(self.verifier, "replay_guard", None), "close", None)
                    if close is not None:
                        await close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http":
            await self._check(scope, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    def original_request(self, scope: Scope) -> tuple[str, bytes] | Refusal:
        """(method, URI as sent by the client) of the request the proxy asks about, or the refusal."""
        if self.proxy == "envoy":
            raw: bytes = scope.get("raw_path") or scope["path"].encode("ascii")
            if not raw.startswith(self._envoy_prefix + b"/"):
                return non_canonical("not_a_check_path")
            uri = raw[len(self._envoy_prefix) :]
            if scope.get("query_string"):
                uri += b"?" + scope["query_string"]
            return scope["method"], uri
        method_name, uri_name = _ORIGINAL[self.proxy]
        methods, uris = header_values(scope, method_name), header_values(scope, uri_name)
        if len(methods) != 1 or len(uris) != 1:
            # Missing: the proxy is not configured as documented. Twice: someone added their own.
            return non_canonical("original_request_unknown")
        try:
            return methods[0].decode("ascii"), uris[0]
        except UnicodeDecodeError:
            return non_canonical("non_canonical_method")

    async def _check(self, scope: Scope, send: Send) -> None:
        started = time.perf_counter()
        if scope["path"] == self.health_path and scope["method"] in ("GET", "HEAD"):
            body = b'{"status":"ok"}'
            headers = [(b"content-type", b"application/json"), (b"content-length", b"15")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        original = self.original_request(scope)
        claims = None
        txn: TxnToken | None = None
        refusal: Refusal | None = None
        forged = forged_header(scope.get("headers", ()))
        if forged is not None and not isinstance(original, Refusal):
            original = non_canonical(forged)
        if isinstance(original, Refusal):
            refusal = original
            method, path = "?", "?"
        else:
            method, uri = original
            raw_path = uri.split(b"?", 1)[0]
            # Decoded only for matching, and only once the raw path is known to be canonical.
            path = unquote(raw_path.decode("ascii")) if path_problem(raw_path) is None else "?"
            if self.verifier is not None:
                claims, refusal = await check_request(
                    self.verifier, self.routes, method, raw_path, path, header_values(scope, b"authorization")
                )
            if refusal is None and self.txn_verifier is not None:
                txn, refusal = await check_txn_request(
                    self.txn_verifier, self.txn_routes, method, raw_path, path,
                    header_values(scope, TXN_TOKEN.encode("ascii")),
                )  # fmt: skip
        if refusal is not None:
            await send_refusal(send, refusal)
            status = refusal.status
        else:
            headers = list(_ALLOWED_HEAD)
            if claims is not None:
                headers.extend(identity_headers(claims))
            if txn is not None:
                headers.extend(txn_identity_headers(txn))
            if self.proxy == "envoy":
                # Envoy copies only the allowed_upstream_headers we send; the client's others of those
                # names would go on, so name them for removal (applied after ours are set).
                sent = {name for name, _ in headers}
                absent = [name for name in IDENTITY_HEADERS if name not in sent]
                if absent:
                    headers.append((ENVOY_REMOVE, b", ".join(absent)))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            status = 200
        _line.info(
            "gateway_check",
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


def build_gateway(config: GatewayConfig) -> Gateway:
    """The app for `config`: key source, verifier and route table built once, here."""
    verifier, routes = build_verifier(config)
    txn_verifier, txn_routes = build_txn_verifier(config)
    return Gateway(
        verifier=verifier, routes=routes, txn_verifier=txn_verifier, txn_routes=txn_routes,
        proxy=config.proxy, envoy_prefix=config.envoy_prefix, health_path=config.health_path,
    )  # fmt: skip


def app_from_env() -> Gateway:
    """Factory for server worker processes: the config travels in $PURPOSE_GATEWAY_CONFIG."""
    configure_logging()
    return build_gateway(msgspec.json.decode(os.environ[CONFIG_ENV], type=GatewayConfig))


def run(
    config: GatewayConfig, *, listen: str = "127.0.0.1:8082", server: str = "granian", workers: int = 1
) -> None:
    """Serve the gateway on `listen` ("host:port") with granian (default) or uvicorn."""
    build_gateway(config)  # fail fast in the parent on a bad routes file, key file or URL
    serve("exchange.gateway:app_from_env", CONFIG_ENV, config, listen=listen, server=server, workers=workers)
