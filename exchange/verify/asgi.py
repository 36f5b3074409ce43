"""Plain ASGI middleware: the same check in front of any ASGI app (Starlette, FastAPI, Quart, ...).

    app = PurposeMiddleware(app, verifier=verifier, purpose="payments.approve")
    # or, per route:
    app = PurposeMiddleware(app, verifier=verifier, routes=RouteTable.from_file("routes.toml"))

Verified claims are put in `scope["state"]["purpose_claims"]`, which Starlette exposes as
`request.state.purpose_claims`; `claims_from_scope(scope)` reads them in any framework.

Inside a trust domain, `TxnTokenMiddleware` does the same for the `Txn-Token` header
(draft-ietf-oauth-transaction-tokens-10 §12): the verified `TxnToken` (claims and the header value to
forward unmodified) goes to `scope["state"]["txn_token"]`, read with `txn_token_from_scope(scope)`.

    app = TxnTokenMiddleware(app, verifier=TxnTokenVerifier(trust_domain=..., issuer=...))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final
from urllib.parse import quote

from exchange.verify.access import TXN_TOKEN, Outcome, TxnOutcome, check_request, check_txn_request
from exchange.verify.bearer import Refusal
from exchange.verify.claims import VerifiedClaims
from exchange.verify.routes import RouteTable
from exchange.verify.txn import TxnToken, TxnTokenVerifier
from exchange.verify.verifier import PurposeTokenVerifier

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLAIMS_KEY: Final = "purpose_claims"
TXN_KEY: Final = "txn_token"
# WebSocket close code 1008 (policy violation): the handshake is refused before accept.
_WS_POLICY_VIOLATION: Final = 1008


def claims_from_scope(scope: Scope) -> VerifiedClaims | None:
    """The claims PurposeMiddleware verified for this request, if any (None on open routes)."""
    state = scope.get("state")
    claims = state.get(CLAIMS_KEY) if isinstance(state, MutableMapping) else None
    return claims if isinstance(claims, VerifiedClaims) else None


async def send_refusal(send: Send, refusal: Refusal) -> None:
    """The one refusal shape (exchange.verify.bearer), over ASGI; shared with the ambassador and gateway."""
    body = refusal.body
    headers = [(name.lower().encode("ascii"), value.encode("ascii")) for name, value in refusal.headers()]
    headers.append((b"content-length", str(len(body)).encode("ascii")))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def header_values(scope: Scope, name: bytes) -> list[bytes]:
    """Every value of header `name` (lower case) in the request, in order: two must stay two."""
    return [value for key, value in scope.get("headers", ()) if key.lower() == name]


def raw_path(scope: Scope) -> bytes:
    """The path as the client sent it (percent-encoded); servers without raw_path get it re-encoded."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and raw:
        return raw.split(b"?", 1)[0]
    return quote(scope["path"]).encode("ascii")


async def check_scope(verifier: PurposeTokenVerifier, routes: RouteTable, scope: Scope) -> Outcome:
    """The shared access decision (exchange.verify.access) for one ASGI request."""
    return await check_request(
        verifier, routes, scope.get("method", "GET"), raw_path(scope), scope["path"],
        header_values(scope, b"authorization"),
    )  # fmt: skip


async def check_txn_scope(verifier: TxnTokenVerifier, routes: RouteTable, scope: Scope) -> TxnOutcome:
    """The same decision on the request's `Txn-Token` header (shared with the ambassador)."""
    return await check_txn_request(
        verifier, routes, scope.get("method", "GET"), raw_path(scope), scope["path"],
        header_values(scope, TXN_TOKEN.encode("ascii")),
    )  # fmt: skip


class _Guard:
    """What both middlewares do around their own check: pass lifespan through, send the refusal (or
    close a WebSocket handshake), put what was verified in the scope's state, call the app."""

    _state_key: str

    def __init__(self, app: ASGIApp, routes: RouteTable) -> None:
        self.app = app
        self.routes = routes

    async def _check(self, scope: Scope) -> tuple[object | None, Refusal | None]:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan and friends pass through
            return
        verified, refusal = await self._check(scope)
        if refusal is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": _WS_POLICY_VIOLATION})
            else:
                await send_refusal(send, refusal)
            return
        if verified is not None:
            scope.setdefault("state", {})[self._state_key] = verified
        await self.app(scope, receive, send)


class PurposeMiddleware(_Guard):
    """Require a valid purpose token (of `purpose`, or per `routes`) before calling `app`."""

    _state_key = CLAIMS_KEY

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: PurposeTokenVerifier,
        purpose: str | None = None,
        routes: RouteTable | None = None,
    ) -> None:
        super().__init__(app, RouteTable.chosen(routes, purpose, "purpose"))
        self.verifier = verifier

    async def _check(self, scope: Scope) -> Outcome:
        return await check_scope(self.verifier, self.routes, scope)


def txn_token_from_scope(scope: Scope) -> TxnToken | None:
    """The Txn-Token TxnTokenMiddleware verified for this request, if any (None on open routes)."""
    state = scope.get("state")
    token = state.get(TXN_KEY) if isinstance(state, MutableMapping) else None
    return token if isinstance(token, TxnToken) else None


class TxnTokenMiddleware(_Guard):
    """Require a valid Txn-Token (of `scope`, or per `routes`, whose purposes are scopes) before `app`."""

    _state_key = TXN_KEY

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: TxnTokenVerifier,
        scope: str | None = None,
        routes: RouteTable | None = None,
    ) -> None:
        super().__init__(app, RouteTable.chosen(routes, scope, "scope"))
        self.verifier = verifier

    async def _check(self, scope: Scope) -> TxnOutcome:
        return await check_txn_scope(self.verifier, self.routes, scope)
