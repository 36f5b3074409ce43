"""Plain WSGI middleware: the same check in front of any WSGI app (and the helpers Flask and Django use).

    app = PurposeWSGIMiddleware(app, verifier=verifier, routes=RouteTable.from_file("routes.toml"))
    # or: PurposeWSGIMiddleware(app, verifier=verifier, purpose="payments.approve")

Verified claims are put in `environ["purpose.claims"]` (`claims_from_environ(environ)` reads them).
`TxnTokenWSGIMiddleware` checks the `Txn-Token` header the same way (draft-ietf-oauth-transaction-
tokens-10 §12) and puts the verified `TxnToken` in `environ["txn.token"]` (`txn_token_from_environ`).
Refusals are the one shape every integration sends (exchange.verify.bearer). The verifier's synchronous
`verify` fetches and refreshes keys itself, so a threaded WSGI server needs no event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final
from urllib.parse import quote_from_bytes

from exchange.verify.access import Outcome, TxnOutcome, check_request_sync, check_txn_request_sync
from exchange.verify.bearer import Refusal
from exchange.verify.claims import VerifiedClaims
from exchange.verify.routes import RouteTable
from exchange.verify.txn import TxnToken, TxnTokenVerifier
from exchange.verify.verifier import PurposeTokenVerifier

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

CLAIMS_KEY: Final = "purpose.claims"
TXN_KEY: Final = "txn.token"
_STATUS_TEXT: Final = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}


def claims_from_environ(environ: Environ) -> VerifiedClaims | None:
    """The claims PurposeWSGIMiddleware verified for this request, if any (None on open routes)."""
    claims = environ.get(CLAIMS_KEY)
    return claims if isinstance(claims, VerifiedClaims) else None


def environ_credentials(environ: Environ) -> list[str]:
    """The Authorization value (WSGI servers fold two headers into one, which `read_bearer` refuses)."""
    value = environ.get("HTTP_AUTHORIZATION")
    return [] if value is None else [value]


def environ_txn_values(environ: Environ) -> list[str]:
    """The Txn-Token value (two headers arrive folded with a comma, which is refused as two tokens)."""
    value = environ.get("HTTP_TXN_TOKEN")
    return [] if value is None else [value]


def txn_token_from_environ(environ: Environ) -> TxnToken | None:
    """The Txn-Token TxnTokenWSGIMiddleware verified for this request, if any."""
    token = environ.get(TXN_KEY)
    return token if isinstance(token, TxnToken) else None


def environ_target(environ: Environ) -> tuple[str, bytes, str]:
    """(method, raw path as sent, decoded path the app routes on) of a WSGI request.

    The raw path comes from RAW_URI / REQUEST_URI where the server provides it (gunicorn, werkzeug),
    otherwise PATH_INFO re-encoded (PEP 3333 hands it over as latin-1 decoded bytes).
    """
    path_bytes = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")).encode("latin-1")
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    raw_path = raw.split("?", 1)[0].encode("latin-1") if raw else quote_from_bytes(path_bytes).encode()
    path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
    return environ.get("REQUEST_METHOD", "GET"), raw_path, path


def refusal_response(refusal: Refusal, start_response: StartResponse) -> list[bytes]:
    """Send the refusal through WSGI's start_response; returns the body iterable."""
    body = refusal.body
    headers = [*refusal.headers(), ("Content-Length", str(len(body)))]
    start_response(f"{refusal.status} {_STATUS_TEXT.get(refusal.status, 'Refused')}", headers)
    return [body]


class _Guard:
    """What both middlewares do around their own check: answer the refusal, or put what was verified
    in the environ and call the app."""

    _environ_key: str

    def __init__(self, app: WSGIApp, routes: RouteTable) -> None:
        self.app = app
        self.routes = routes

    def _check(self, environ: Environ) -> tuple[object | None, Refusal | None]:
        raise NotImplementedError

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        verified, refusal = self._check(environ)
        if refusal is not None:
            return refusal_response(refusal, start_response)
        environ[self._environ_key] = verified
        return self.app(environ, start_response)


class PurposeWSGIMiddleware(_Guard):
    """Require a valid purpose token (of `purpose`, or per `routes`) before calling `app`."""

    _environ_key = CLAIMS_KEY

    def __init__(
        self,
        app: WSGIApp,
        *,
        verifier: PurposeTokenVerifier,
        purpose: str | None = None,
        routes: RouteTable | None = None,
    ) -> None:
        super().__init__(app, RouteTable.chosen(routes, purpose, "purpose"))
        self.verifier = verifier

    def _check(self, environ: Environ) -> Outcome:
        method, raw_path, path = environ_target(environ)
        return check_request_sync(
            self.verifier, self.routes, method, raw_path, path, environ_credentials(environ)
        )


class TxnTokenWSGIMiddleware(_Guard):
    """Require a valid Txn-Token (of `scope`, or per `routes`, whose purposes are scopes) before `app`."""

    _environ_key = TXN_KEY

    def __init__(
        self,
        app: WSGIApp,
        *,
        verifier: TxnTokenVerifier,
        scope: str | None = None,
        routes: RouteTable | None = None,
    ) -> None:
        super().__init__(app, RouteTable.chosen(routes, scope, "scope"))
        self.verifier = verifier

    def _check(self, environ: Environ) -> TxnOutcome:
        method, raw_path, path = environ_target(environ)
        return check_txn_request_sync(
            self.verifier, self.routes, method, raw_path, path, environ_txn_values(environ)
        )
