"""Plain ASGI middleware: the same check in front of any ASGI app (Starlette, FastAPI, Quart, ...).

    app = PurposeMiddleware(app, verifier=verifier, purpose="payments.approve")
    # or, per route:
    app = PurposeMiddleware(app, verifier=verifier, routes=RouteTable.from_file("routes.toml"))

Verified claims are put in `scope["state"]["purpose_claims"]`, which Starlette exposes as
`request.state.purpose_claims`; `claims_from_scope(scope)` reads them in any framework.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, NamedTuple

import msgspec

from exchange.verify.bearer import bearer_token, challenge, token_hash
from exchange.verify.claims import VerifiedClaims
from exchange.verify.errors import VerificationError
from exchange.verify.routes import RouteTable
from exchange.verify.verifier import PurposeTokenVerifier

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLAIMS_KEY: Final = "purpose_claims"
# WebSocket close code 1008 (policy violation): the handshake is refused before accept.
_WS_POLICY_VIOLATION: Final = 1008

log = logging.getLogger("exchange.verify")


def claims_from_scope(scope: Scope) -> VerifiedClaims | None:
    """The claims PurposeMiddleware verified for this request, if any (None on open routes)."""
    state = scope.get("state")
    claims = state.get(CLAIMS_KEY) if isinstance(state, MutableMapping) else None
    return claims if isinstance(claims, VerifiedClaims) else None


class Refusal(NamedTuple):
    """Why a request is answered by us instead of the app: HTTP status, challenge, error, reason."""

    status: int
    www_authenticate: str | None
    error: str
    # The VerificationError reason code (or "no_token" / "no_route"), for the service's log only.
    reason: str


async def send_refusal(send: Send, refusal: Refusal) -> None:
    """An RFC 6750-style JSON refusal; shared with the ambassador."""
    body = msgspec.json.encode({"error": refusal.error})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if refusal.www_authenticate is not None:
        headers.append((b"www-authenticate", refusal.www_authenticate.encode("ascii")))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def authorization_header(scope: Scope) -> bytes | None:
    found: bytes | None = None
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            if found is not None:
                # Two Authorization headers: ambiguous, so no token at all rather than a guess.
                return None
            found = value
    return found


async def check_request(
    verifier: PurposeTokenVerifier, routes: RouteTable, scope: Scope
) -> tuple[VerifiedClaims | None, Refusal | None]:
    """Decide one request: (claims, None), (None, None) on an open route, or (None, refusal)."""
    route = routes.match(scope.get("method", "GET"), scope["path"])
    if route is None:
        return None, Refusal(404, None, "not_found", "no_route")
    if route.open:
        return None, None
    token = bearer_token(authorization_header(scope))
    if token is None:
        status, header = challenge(None)
        return None, Refusal(status, header, "invalid_token", "no_token")
    try:
        claims = await verifier.averify(token, purpose=route.purpose)
    except VerificationError as exc:
        status, header = challenge(exc, purpose=route.purpose)
        error = "insufficient_scope" if status == 403 else "invalid_token"
        log.info(
            "purpose_token_refused reason=%s detail=%s path=%s token_sha256=%s",
            exc.reason, exc.detail, scope["path"], token_hash(token),
        )  # fmt: skip
        return None, Refusal(status, header, error, exc.reason)
    return claims, None


class PurposeMiddleware:
    """Require a valid purpose token (of `purpose`, or per `routes`) before calling `app`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: PurposeTokenVerifier,
        purpose: str | None = None,
        routes: RouteTable | None = None,
    ) -> None:
        if purpose is not None and routes is not None:
            raise ValueError("pass purpose or routes, not both")
        self.app = app
        self.verifier = verifier
        self.routes = routes if routes is not None else RouteTable.single(purpose)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan and friends pass through
            return
        claims, refusal = await check_request(self.verifier, self.routes, scope)
        if refusal is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": _WS_POLICY_VIOLATION})
            else:
                await send_refusal(send, refusal)
            return
        if claims is not None:
            state = scope.setdefault("state", {})
            state[CLAIMS_KEY] = claims
        await self.app(scope, receive, send)
