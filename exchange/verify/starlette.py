"""Starlette and FastAPI integration (opt-in: `exchange.verify` itself never imports starlette).

    app = FastAPI()
    install(app, PurposeTokenVerifier(issuer=..., audience="payments"))

    @app.post("/payments/{payment_id}/approve")
    async def approve(payment_id: str, claims: VerifiedClaims = Depends(require_purpose("payments.approve"))):
        claims.require_detail(type="payment", payment_id=payment_id)   # 403 when not covered

Inside a trust domain, `require_txn_token(scope)` is the dependency for the `Txn-Token` header
(draft-ietf-oauth-transaction-tokens-10 §12); `install(app, txn_verifier=TxnTokenVerifier(...))`:

    async def place(txn: TxnToken = Depends(require_txn_token("orders.place"))):
        txn.claims.tctx["quantity"]; httpx.post(next_service, headers=txn.headers())

`require_purpose(...)` is a FastAPI dependency returning the verified claims; in plain Starlette call
`await verified_claims(request, "payments.approve")` in the endpoint, or put the ASGI middleware
(exchange.verify.asgi.PurposeMiddleware) in front. `install` registers the verifier and the handler that
answers with the one refusal shape every integration sends (exchange.verify.bearer); a
VerificationError raised in an endpoint gets the same answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from exchange.verify.access import (
    TXN_TOKEN,
    check_token,
    check_txn_token,
    refused_in_handler,
    txn_scope_refusal,
)
from exchange.verify.bearer import Refusal, refusal_for
from exchange.verify.claims import VerifiedClaims
from exchange.verify.errors import VerificationError
from exchange.verify.txn import TxnToken, TxnTokenVerifier
from exchange.verify.verifier import PurposeTokenVerifier

__all__ = [
    "PurposeTokenRefused",
    "install",
    "require_purpose",
    "require_txn_token",
    "verified_claims",
    "verified_txn_token",
]

STATE_VERIFIER: Final = "purpose_verifier"
STATE_CLAIMS: Final = "purpose_claims"
STATE_TXN_VERIFIER: Final = "txn_verifier"
STATE_TXN: Final = "txn_token"


class PurposeTokenRefused(Exception):
    """Raised by the dependency; `install`'s handler turns it into the refusal response."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


def install(
    app: Starlette,
    verifier: PurposeTokenVerifier | None = None,
    *,
    txn_verifier: TxnTokenVerifier | None = None,
) -> None:
    """Register the verifiers on `app.state` and the handlers that answer refusals."""
    if verifier is None and txn_verifier is None:
        raise ValueError("install needs a verifier, a txn_verifier or both")
    if verifier is not None:
        setattr(app.state, STATE_VERIFIER, verifier)
    if txn_verifier is not None:
        setattr(app.state, STATE_TXN_VERIFIER, txn_verifier)
    app.add_exception_handler(PurposeTokenRefused, _refusal_handler)
    app.add_exception_handler(VerificationError, _verification_error_handler)


async def verified_claims(request: Request, purpose: str | None = None) -> VerifiedClaims:
    """The request's verified claims (of `purpose` when given); raises PurposeTokenRefused."""
    claims = getattr(request.state, STATE_CLAIMS, None)
    if isinstance(claims, VerifiedClaims):
        if purpose is not None and claims.purpose != purpose:
            error = VerificationError("wrong_purpose", f"token is for {claims.purpose!r}")
            raise PurposeTokenRefused(refusal_for(error, purpose=purpose))
        return claims
    verifier = getattr(request.app.state, STATE_VERIFIER, None)
    if not isinstance(verifier, PurposeTokenVerifier):
        # Without install() the refusal would render in the framework's own shape: a wiring bug.
        raise RuntimeError("require_purpose needs exchange.verify.starlette.install(app, verifier)")
    credentials = request.headers.getlist("authorization")
    claims, refusal = await check_token(verifier, credentials, purpose, request.url.path)
    if refusal is not None:
        raise PurposeTokenRefused(refusal)
    setattr(request.state, STATE_CLAIMS, claims)
    assert claims is not None
    return claims


def require_purpose(purpose: str | None = None) -> Callable[[Request], Awaitable[VerifiedClaims]]:
    """A FastAPI dependency: `claims: VerifiedClaims = Depends(require_purpose("payments.approve"))`."""

    async def dependency(request: Request) -> VerifiedClaims:
        return await verified_claims(request, purpose)

    return dependency


async def verified_txn_token(request: Request, scope: str | None = None) -> TxnToken:
    """The request's verified Txn-Token (of `scope` when given); raises PurposeTokenRefused."""
    token = getattr(request.state, STATE_TXN, None)
    if isinstance(token, TxnToken):
        refusal = txn_scope_refusal(token, scope)
        if refusal is not None:
            raise PurposeTokenRefused(refusal)
        return token
    verifier = getattr(request.app.state, STATE_TXN_VERIFIER, None)
    if not isinstance(verifier, TxnTokenVerifier):
        raise RuntimeError("require_txn_token needs exchange.verify.starlette.install(app, txn_verifier=...)")
    found, refusal = await check_txn_token(
        verifier, request.headers.getlist(TXN_TOKEN), scope, request.url.path
    )
    if refusal is not None:
        raise PurposeTokenRefused(refusal)
    assert found is not None
    setattr(request.state, STATE_TXN, found)
    return found


def require_txn_token(scope: str | None = None) -> Callable[[Request], Awaitable[TxnToken]]:
    """A FastAPI dependency: `txn: TxnToken = Depends(require_txn_token("orders.place"))`."""

    async def dependency(request: Request) -> TxnToken:
        return await verified_txn_token(request, scope)

    return dependency


def _render(refusal: Refusal) -> Response:
    return Response(refusal.body, status_code=refusal.status, headers=dict(refusal.headers()))


async def _refusal_handler(request: Request, exc: Any) -> Response:
    assert isinstance(exc, PurposeTokenRefused)
    return _render(exc.refusal)


async def _verification_error_handler(request: Request, exc: Any) -> Response:
    assert isinstance(exc, VerificationError)
    return _render(refused_in_handler(exc, request.url.path))
