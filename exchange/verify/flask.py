"""Flask integration (opt-in: `exchange.verify` itself never imports flask).

    purpose_tokens = PurposeTokens(app, verifier=PurposeTokenVerifier(issuer=..., audience="payments"))

    @app.post("/payments/<payment_id>/approve")
    @require_purpose("payments.approve")
    def approve(payment_id: str):
        claims = current_claims()
        claims.require_detail(type="payment", payment_id=payment_id)   # 403 when not covered
        ...

Inside a trust domain, `@require_txn_token(scope)` checks the `Txn-Token` header (draft-ietf-oauth-
transaction-tokens-10 §12) with `PurposeTokens(app, txn_verifier=TxnTokenVerifier(...))`;
`current_txn_token()` is the verified TxnToken (claims, and `headers()` to pass it on unmodified).

Refusals are the one shape every integration sends (exchange.verify.bearer); a VerificationError raised
in a view (e.g. by `require_detail`) gets the same answer. The verifier's synchronous `verify` fetches
keys itself: no event loop needed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final, TypeVar

from flask import Flask, Response, current_app, g, request

from exchange.verify.access import (
    TXN_TOKEN,
    check_token_sync,
    check_txn_token_sync,
    refused_in_handler,
    txn_scope_refusal,
)
from exchange.verify.bearer import Refusal, refusal_for
from exchange.verify.claims import VerifiedClaims
from exchange.verify.errors import VerificationError
from exchange.verify.txn import TxnToken, TxnTokenVerifier
from exchange.verify.verifier import PurposeTokenVerifier

__all__ = ["PurposeTokens", "current_claims", "current_txn_token", "require_purpose", "require_txn_token"]

EXTENSION: Final = "purpose_tokens"
F = TypeVar("F", bound=Callable[..., Any])


class PurposeTokens:
    """The Flask extension: holds the verifier and answers VerificationErrors raised in views."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        verifier: PurposeTokenVerifier | None = None,
        txn_verifier: TxnTokenVerifier | None = None,
    ) -> None:
        if verifier is None and txn_verifier is None:
            raise ValueError("PurposeTokens needs a verifier, a txn_verifier or both")
        self.verifier = verifier
        self.txn_verifier = txn_verifier
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        app.extensions[EXTENSION] = self
        app.register_error_handler(VerificationError, _verification_error)


def require_purpose(purpose: str | None = None) -> Callable[[F], F]:
    """A view decorator requiring a valid purpose token, of `purpose` when given (any otherwise)."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            claims = g.get("purpose_claims")
            if not isinstance(claims, VerifiedClaims):
                extension = current_app.extensions.get(EXTENSION)
                if not isinstance(extension, PurposeTokens) or extension.verifier is None:
                    raise RuntimeError("require_purpose needs PurposeTokens(app, verifier=...)")
                credentials = request.headers.getlist("Authorization")
                claims, refusal = check_token_sync(extension.verifier, credentials, purpose, request.path)
                if refusal is not None:
                    return _response(refusal)
                g.purpose_claims = claims
            elif purpose is not None and claims.purpose != purpose:
                error = VerificationError("wrong_purpose", f"token is for {claims.purpose!r}")
                return _response(refusal_for(error, purpose=purpose))
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def current_claims() -> VerifiedClaims:
    """The claims `require_purpose` verified for this request."""
    claims = g.get("purpose_claims")
    if not isinstance(claims, VerifiedClaims):
        raise RuntimeError("current_claims() used in a view without require_purpose")
    return claims


def require_txn_token(scope: str | None = None) -> Callable[[F], F]:
    """A view decorator requiring a valid Txn-Token, of `scope` when given (any otherwise)."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = g.get("txn_token")
            if not isinstance(token, TxnToken):
                extension = current_app.extensions.get(EXTENSION)
                if not isinstance(extension, PurposeTokens) or extension.txn_verifier is None:
                    raise RuntimeError("require_txn_token needs PurposeTokens(app, txn_verifier=...)")
                values = request.headers.getlist(TXN_TOKEN)
                token, refusal = check_txn_token_sync(extension.txn_verifier, values, scope, request.path)
                if refusal is not None:
                    return _response(refusal)
                g.txn_token = token
            elif (refusal := txn_scope_refusal(token, scope)) is not None:
                return _response(refusal)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def current_txn_token() -> TxnToken:
    """The Txn-Token `require_txn_token` verified for this request."""
    token = g.get("txn_token")
    if not isinstance(token, TxnToken):
        raise RuntimeError("current_txn_token() used in a view without require_txn_token")
    return token


def _response(refusal: Refusal) -> Response:
    return Response(refusal.body, status=refusal.status, headers=refusal.headers())


def _verification_error(exc: VerificationError) -> Response:
    return _response(refused_in_handler(exc, request.path))
