"""Django integration (opt-in: `exchange.verify` itself never imports django).

settings.py:

    PURPOSE_TOKEN_VERIFIER = PurposeTokenVerifier(issuer=..., audience="payments")  # or a dotted path
    PURPOSE_TOKEN_ROUTES = BASE_DIR / "routes.toml"   # for the middleware only (or a RouteTable)
    MIDDLEWARE = [..., "exchange.verify.django.PurposeTokenMiddleware"]

views.py:

    @require_purpose("payments.approve")
    def approve(request, payment_id):
        request.purpose_claims.require_detail(type="payment", payment_id=payment_id)

Inside a trust domain, `TxnTokenMiddleware` (settings.TXN_TOKEN_VERIFIER, TXN_TOKEN_ROUTES, whose
purposes are Txn-Token scopes) and `@require_txn_token(scope)` check the `Txn-Token` header
(draft-ietf-oauth-transaction-tokens-10 §12); the verified TxnToken is `request.txn_token`.

The middleware enforces the route table on every request; the decorator one view's purpose (with or
without the middleware: a token verified once is not verified again, so single-use tokens pass both).
Both answer with the one refusal shape every integration sends (exchange.verify.bearer), and a
VerificationError raised in a view is answered alike by the middleware.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from exchange.verify.access import (
    check_request_sync,
    check_token_sync,
    check_txn_request_sync,
    check_txn_token_sync,
    refused_in_handler,
    txn_scope_refusal,
)
from exchange.verify.bearer import Refusal, refusal_for
from exchange.verify.claims import VerifiedClaims
from exchange.verify.errors import VerificationError
from exchange.verify.routes import RouteTable
from exchange.verify.txn import TxnToken, TxnTokenVerifier
from exchange.verify.verifier import PurposeTokenVerifier
from exchange.verify.wsgi import environ_credentials, environ_target, environ_txn_values

__all__ = ["PurposeTokenMiddleware", "TxnTokenMiddleware", "require_purpose", "require_txn_token"]

ATTRIBUTE: Final = "purpose_claims"
TXN_ATTRIBUTE: Final = "txn_token"
F = TypeVar("F", bound=Callable[..., HttpResponse])


def configured_verifier() -> PurposeTokenVerifier:
    """settings.PURPOSE_TOKEN_VERIFIER: a PurposeTokenVerifier, or the dotted path of one."""
    value = getattr(settings, "PURPOSE_TOKEN_VERIFIER", None)
    if isinstance(value, str):
        value = import_string(value)
    if not isinstance(value, PurposeTokenVerifier):
        raise ImproperlyConfigured("settings.PURPOSE_TOKEN_VERIFIER must be a PurposeTokenVerifier")
    return value


def configured_txn_verifier() -> TxnTokenVerifier:
    """settings.TXN_TOKEN_VERIFIER: a TxnTokenVerifier, or the dotted path of one."""
    value = getattr(settings, "TXN_TOKEN_VERIFIER", None)
    if isinstance(value, str):
        value = import_string(value)
    if not isinstance(value, TxnTokenVerifier):
        raise ImproperlyConfigured("settings.TXN_TOKEN_VERIFIER must be a TxnTokenVerifier")
    return value


def _configured_routes(
    name: str = "PURPOSE_TOKEN_ROUTES", middleware: str = "PurposeTokenMiddleware"
) -> RouteTable:
    value = getattr(settings, name, None)
    if isinstance(value, RouteTable):
        return value
    if isinstance(value, str | Path):
        return RouteTable.from_file(value)
    raise ImproperlyConfigured(f"{middleware} needs settings.{name} (a TOML file)")


class PurposeTokenMiddleware:
    """Enforce settings.PURPOSE_TOKEN_ROUTES before any view runs; claims on `request.purpose_claims`."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.verifier = configured_verifier()
        self.routes = _configured_routes()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        method, raw_path, path = environ_target(request.META)
        claims, refusal = check_request_sync(
            self.verifier, self.routes, method, raw_path, path, environ_credentials(request.META)
        )
        if refusal is not None:
            return _response(refusal)
        if claims is not None:
            setattr(request, ATTRIBUTE, claims)
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, VerificationError):  # e.g. require_detail in a view
            return _response(refused_in_handler(exception, request.path))
        return None


def require_purpose(purpose: str | None = None) -> Callable[[F], F]:
    """A view decorator requiring a valid purpose token, of `purpose` when given (any otherwise)."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            claims = getattr(request, ATTRIBUTE, None)
            if not isinstance(claims, VerifiedClaims):
                credentials = environ_credentials(request.META)
                claims, refusal = check_token_sync(configured_verifier(), credentials, purpose, request.path)
                if refusal is not None:
                    return _response(refusal)
                setattr(request, ATTRIBUTE, claims)
            elif purpose is not None and claims.purpose != purpose:
                error = VerificationError("wrong_purpose", f"token is for {claims.purpose!r}")
                return _response(refusal_for(error, purpose=purpose))
            try:
                return view(request, *args, **kwargs)
            except VerificationError as exc:
                return _response(refused_in_handler(exc, request.path))

        return wrapper  # type: ignore[return-value]

    return decorate


class TxnTokenMiddleware:
    """Enforce settings.TXN_TOKEN_ROUTES on the Txn-Token header; the token on `request.txn_token`."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.verifier = configured_txn_verifier()
        self.routes = _configured_routes("TXN_TOKEN_ROUTES", "TxnTokenMiddleware")

    def __call__(self, request: HttpRequest) -> HttpResponse:
        method, raw_path, path = environ_target(request.META)
        token, refusal = check_txn_request_sync(
            self.verifier, self.routes, method, raw_path, path, environ_txn_values(request.META)
        )
        if refusal is not None:
            return _response(refusal)
        if token is not None:
            setattr(request, TXN_ATTRIBUTE, token)
        return self.get_response(request)


def require_txn_token(scope: str | None = None) -> Callable[[F], F]:
    """A view decorator requiring a valid Txn-Token, of `scope` when given (any otherwise)."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            token = getattr(request, TXN_ATTRIBUTE, None)
            if not isinstance(token, TxnToken):
                values = environ_txn_values(request.META)
                token, refusal = check_txn_token_sync(configured_txn_verifier(), values, scope, request.path)
                if refusal is not None:
                    return _response(refusal)
                setattr(request, TXN_ATTRIBUTE, token)
            elif (refusal := txn_scope_refusal(token, scope)) is not None:
                return _response(refusal)
            return view(request, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _response(refusal: Refusal) -> HttpResponse:
    response = HttpResponse(refusal.body, status=refusal.status)
    for name, value in refusal.headers():
        response[name] = value
    return response
