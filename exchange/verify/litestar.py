"""Litestar integration (opt-in: `exchange.verify` itself never imports litestar).

    app = Litestar(
        route_handlers=[approve],
        plugins=[PurposeTokenPlugin(PurposeTokenVerifier(issuer=..., audience="payments"))],
    )

    @post("/payments/{payment_id:str}/approve", guards=[require_purpose("payments.approve")])
    async def approve(payment_id: FromPath[str], purpose_claims: PurposeClaimsDependency) -> dict[str, str]:
        purpose_claims.require_detail(type="payment", payment_id=payment_id)
        ...

The guard verifies the bearer token, answers RFC 6750 on failure (401 invalid_token; 403
insufficient_scope for a valid token of another purpose), and leaves the claims on
`request.state.purpose_claims`; the plugin also provides them as the `purpose_claims` dependency.
A `VerificationError` raised inside a handler (e.g. by `require_detail`) gets the same answer.

Inside a trust domain, `require_txn_token(scope)` guards on the `Txn-Token` header (draft-ietf-oauth-
transaction-tokens-10 §12), with `PurposeTokenPlugin(txn_verifier=TxnTokenVerifier(...))`; handlers get
the verified TxnToken as the `txn_token` dependency (`TxnTokenDependency`).
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

from litestar import Request, Response
from litestar.config.app import AppConfig
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException, ImproperlyConfiguredException
from litestar.handlers.base import BaseRouteHandler
from litestar.plugins import InitPluginProtocol
from litestar.types import Guard

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
    "PurposeClaimsDependency",
    "PurposeTokenPlugin",
    "TxnTokenDependency",
    "VerifiedClaims",
    "require_purpose",
    "require_txn_token",
]

#: Annotate a handler parameter named `purpose_claims` with this to receive the verified claims.
PurposeClaimsDependency: TypeAlias = NamedDependency[VerifiedClaims]
#: Annotate a handler parameter named `txn_token` with this to receive the verified Txn-Token.
TxnTokenDependency: TypeAlias = NamedDependency[TxnToken]

STATE_VERIFIER: Final = "purpose_verifier"
STATE_CLAIMS: Final = "purpose_claims"
STATE_TXN_VERIFIER: Final = "txn_verifier"
STATE_TXN: Final = "txn_token"


class PurposeTokenRefused(HTTPException):
    """A refusal raised by the guard. An HTTPException, so that even without the plugin's handler the
    status and challenge are right; with the plugin (required for `require_purpose()` without
    `verifier=`) the body is the one every integration sends."""

    def __init__(self, refusal: Refusal) -> None:
        headers = dict(refusal.headers())
        super().__init__(detail=refusal.error, status_code=refusal.status, headers=headers)
        self.refusal = refusal


class PurposeTokenPlugin(InitPluginProtocol):
    """Registers the verifier on the app, the `purpose_claims` dependency and the 401/403 handler."""

    def __init__(
        self, verifier: PurposeTokenVerifier | None = None, *, txn_verifier: TxnTokenVerifier | None = None
    ) -> None:
        if verifier is None and txn_verifier is None:
            raise ValueError("PurposeTokenPlugin needs a verifier, a txn_verifier or both")
        self.verifier = verifier
        self.txn_verifier = txn_verifier

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        if self.verifier is not None:
            app_config.state[STATE_VERIFIER] = self.verifier
            app_config.dependencies.setdefault(STATE_CLAIMS, Provide(_purpose_claims, sync_to_thread=False))
        if self.txn_verifier is not None:
            app_config.state[STATE_TXN_VERIFIER] = self.txn_verifier
            app_config.dependencies.setdefault(STATE_TXN, Provide(_txn_token, sync_to_thread=False))
        app_config.exception_handlers.setdefault(PurposeTokenRefused, _refusal_handler)
        app_config.exception_handlers.setdefault(VerificationError, _verification_error_handler)
        return app_config


def require_purpose(purpose: str | None = None, *, verifier: PurposeTokenVerifier | None = None) -> Guard:
    """A guard requiring a valid purpose token, of `purpose` when given (any purpose otherwise).

    The verifier is the plugin's unless one is passed here. Several guards on one request verify the
    token once: a single-use token must not be "replayed" by the second guard.
    """

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        claims = connection.state.get(STATE_CLAIMS)
        if isinstance(claims, VerifiedClaims):
            if purpose is not None and claims.purpose != purpose:
                error = VerificationError("wrong_purpose", f"token is for {claims.purpose!r}")
                raise PurposeTokenRefused(refusal_for(error, purpose=purpose))
            return
        active = verifier or connection.app.state.get(STATE_VERIFIER)
        if not isinstance(active, PurposeTokenVerifier):
            raise ImproperlyConfiguredException("require_purpose needs PurposeTokenPlugin or verifier=")
        credentials = connection.headers.getall("authorization", [])
        claims, refusal = await check_token(active, credentials, purpose, connection.url.path)
        if refusal is not None:
            raise PurposeTokenRefused(refusal)
        connection.state[STATE_CLAIMS] = claims

    return guard


def require_txn_token(scope: str | None = None, *, verifier: TxnTokenVerifier | None = None) -> Guard:
    """A guard requiring a valid Txn-Token, of `scope` when given (any scope otherwise)."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        token = connection.state.get(STATE_TXN)
        if isinstance(token, TxnToken):
            refusal = txn_scope_refusal(token, scope)
            if refusal is not None:
                raise PurposeTokenRefused(refusal)
            return
        active = verifier or connection.app.state.get(STATE_TXN_VERIFIER)
        if not isinstance(active, TxnTokenVerifier):
            raise ImproperlyConfiguredException(
                "require_txn_token needs PurposeTokenPlugin(txn_verifier=...)"
            )
        values = connection.headers.getall(TXN_TOKEN, [])
        found, refusal = await check_txn_token(active, values, scope, connection.url.path)
        if refusal is not None:
            raise PurposeTokenRefused(refusal)
        connection.state[STATE_TXN] = found

    return guard


def _txn_token(request: Request[Any, Any, Any]) -> TxnToken:
    token = request.state.get(STATE_TXN)
    if not isinstance(token, TxnToken):
        raise ImproperlyConfiguredException("txn_token used on a route without require_txn_token")
    return token


def _purpose_claims(request: Request[Any, Any, Any]) -> VerifiedClaims:
    claims = request.state.get(STATE_CLAIMS)
    if not isinstance(claims, VerifiedClaims):
        # A handler asked for claims on a route without require_purpose: a wiring bug, not a 401.
        raise ImproperlyConfiguredException("purpose_claims used on a route without require_purpose")
    return claims


def _render(refusal: Refusal) -> Response[bytes]:
    return Response(refusal.body, status_code=refusal.status, headers=dict(refusal.headers()))


def _refusal_handler(request: Request[Any, Any, Any], exc: PurposeTokenRefused) -> Response[bytes]:
    return _render(exc.refusal)


def _verification_error_handler(request: Request[Any, Any, Any], exc: VerificationError) -> Response[bytes]:
    # Raised from a handler, e.g. claims.require_detail(...) for an operation the token does not cover.
    return _render(refused_in_handler(exc, request.url.path))
