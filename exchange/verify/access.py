"""One access decision per request, shared by every placement: target → route → credentials → token.

Every integration (ASGI, Starlette/FastAPI, Litestar, Flask, Django, WSGI), the ambassador and the
gateway call these and render the `Refusal` they return; none of them decides on its own. Steps, in
order: a non-canonical method or path is refused (400, never normalised: the service behind us must
not resolve a path we matched differently), and so is a path whose route depends on letter case (an
upstream may ignore case); the route table picks the purpose (no route: 404, open:
no token); all values of the credentials header are read (two of them: 400); the token is verified.

The Txn-Token (draft-ietf-oauth-transaction-tokens-10 §12) is the second token kind: the same steps
with its own header (`Txn-Token`, exactly one token, §12.1), its own verifier (TxnTokenVerifier: typ,
signature, aud = our trust domain, exp, §12.2) and the route's purpose read as the Txn-Token's scope,
answered in the same refusal shape (403 without a challenge: a Txn-Token is not a credential, §13.12).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar

from exchange.verify.bearer import (
    NO_ROUTE,
    NO_TXN_TOKEN,
    TWO_TXN_TOKENS,
    Refusal,
    non_canonical,
    read_bearer,
    refusal_for,
    token_hash,
    txn_refusal_for,
)
from exchange.verify.claims import VerifiedClaims
from exchange.verify.errors import VerificationError
from exchange.verify.routes import Route, RouteTable, method_problem, path_problem
from exchange.verify.txn import TXN_TOKEN_HEADER, TxnToken, TxnTokenVerifier, txn_token_of
from exchange.verify.verifier import PurposeTokenVerifier

AUTHORIZATION: Final = "authorization"
TXN_TOKEN: Final = TXN_TOKEN_HEADER

log = logging.getLogger("exchange.verify")

Outcome = tuple[VerifiedClaims | None, Refusal | None]
TxnOutcome = tuple[TxnToken | None, Refusal | None]
T = TypeVar("T")


def route_for(routes: RouteTable, method: str, raw_path: bytes, path: str) -> Route | Refusal:
    """The route for a request target, or the refusal: non-canonical target (400) or no route (404)."""
    problem = method_problem(method) or path_problem(raw_path)
    if problem is not None:
        return non_canonical(problem)
    route = routes.match(method, path)
    case = routes.case_problem(method, path, route)
    if case is not None:
        return non_canonical(case)
    return NO_ROUTE if route is None else route


def guarded_route(routes: RouteTable, method: str, raw_path: bytes, path: str) -> Route | Refusal | None:
    """The route whose token must be checked, the refusal, or None for an open route."""
    route = route_for(routes, method, raw_path, path)
    return None if isinstance(route, Route) and route.open else route


def _decided(
    token: str | Refusal, verify: Callable[[str], T], refuse: Callable[[VerificationError, str], Refusal]
) -> tuple[T | None, Refusal | None]:
    if isinstance(token, Refusal):
        return None, token
    try:
        return verify(token), None
    except VerificationError as exc:
        return None, refuse(exc, token)


async def _adecided(
    token: str | Refusal,
    verify: Callable[[str], Awaitable[T]],
    refuse: Callable[[VerificationError, str], Refusal],
) -> tuple[T | None, Refusal | None]:
    if isinstance(token, Refusal):
        return None, token
    try:
        return await verify(token), None
    except VerificationError as exc:
        return None, refuse(exc, token)


async def check_token(
    verifier: PurposeTokenVerifier, credentials: Sequence[str | bytes], purpose: str | None, path: str
) -> Outcome:
    """Verify the bearer token among `credentials` (every value of the header) for `purpose`."""
    return await _adecided(
        read_bearer(credentials),
        lambda token: verifier.averify(token, purpose=purpose),
        lambda exc, token: _refused(exc, purpose, path, token),
    )


def check_token_sync(
    verifier: PurposeTokenVerifier, credentials: Sequence[str | bytes], purpose: str | None, path: str
) -> Outcome:
    """`check_token` for WSGI frameworks: the verifier's synchronous `verify` (it fetches keys itself)."""
    return _decided(
        read_bearer(credentials),
        lambda token: verifier.verify(token, purpose=purpose),
        lambda exc, token: _refused(exc, purpose, path, token),
    )


async def check_request(
    verifier: PurposeTokenVerifier,
    routes: RouteTable,
    method: str,
    raw_path: bytes,
    path: str,
    credentials: Sequence[str | bytes],
) -> Outcome:
    """Decide one request: (claims, None), (None, None) on an open route, or (None, refusal)."""
    route = guarded_route(routes, method, raw_path, path)
    if not isinstance(route, Route):
        return None, route
    return await check_token(verifier, credentials, route.purpose, path)


def check_request_sync(
    verifier: PurposeTokenVerifier,
    routes: RouteTable,
    method: str,
    raw_path: bytes,
    path: str,
    credentials: Sequence[str | bytes],
) -> Outcome:
    """`check_request` with the synchronous verifier, for WSGI frameworks."""
    route = guarded_route(routes, method, raw_path, path)
    if not isinstance(route, Route):
        return None, route
    return check_token_sync(verifier, credentials, route.purpose, path)


def refused_in_handler(exc: VerificationError, path: str) -> Refusal:
    """The answer to a VerificationError raised by the service's own code (e.g. `require_detail`)."""
    log.info("purpose_token_refused reason=%s detail=%s path=%s", exc.reason, exc.detail, path)
    return refusal_for(exc)


def _refused(exc: VerificationError, purpose: str | None, path: str, token: str) -> Refusal:
    log.info(
        "purpose_token_refused reason=%s detail=%s path=%s token_sha256=%s",
        exc.reason, exc.detail, path, token_hash(token),
    )  # fmt: skip
    return refusal_for(exc, purpose=purpose)


def read_txn_token(values: Sequence[str | bytes]) -> str | Refusal:
    """The one Txn-Token among a request's values of its `Txn-Token` header, or the refusal."""
    try:
        token = txn_token_of(values)
    except VerificationError:
        return TWO_TXN_TOKENS
    return NO_TXN_TOKEN if token is None else token


async def check_txn_token(
    verifier: TxnTokenVerifier, values: Sequence[str | bytes], scope: str | None, path: str
) -> TxnOutcome:
    """Verify the Txn-Token among `values` (every value of the header), of `scope` when given."""

    async def verify(token: str) -> TxnToken:
        return TxnToken(await verifier.averify(token, scope=scope), token)

    return await _adecided(read_txn_token(values), verify, lambda exc, token: _txn_refused(exc, path, token))


def check_txn_token_sync(
    verifier: TxnTokenVerifier, values: Sequence[str | bytes], scope: str | None, path: str
) -> TxnOutcome:
    """`check_txn_token` for WSGI frameworks: the verifier's synchronous `verify` (it fetches keys itself)."""
    return _decided(
        read_txn_token(values),
        lambda token: TxnToken(verifier.verify(token, scope=scope), token),
        lambda exc, token: _txn_refused(exc, path, token),
    )


async def check_txn_request(
    verifier: TxnTokenVerifier,
    routes: RouteTable,
    method: str,
    raw_path: bytes,
    path: str,
    values: Sequence[str | bytes],
) -> TxnOutcome:
    """Decide one request on its Txn-Token; a route's purpose is the Txn-Token scope it needs."""
    route = guarded_route(routes, method, raw_path, path)
    if not isinstance(route, Route):
        return None, route
    return await check_txn_token(verifier, values, route.purpose, path)


def check_txn_request_sync(
    verifier: TxnTokenVerifier,
    routes: RouteTable,
    method: str,
    raw_path: bytes,
    path: str,
    values: Sequence[str | bytes],
) -> TxnOutcome:
    """`check_txn_request` with the synchronous verifier, for WSGI frameworks."""
    route = guarded_route(routes, method, raw_path, path)
    if not isinstance(route, Route):
        return None, route
    return check_txn_token_sync(verifier, values, route.purpose, path)


def txn_scope_refusal(token: TxnToken, scope: str | None) -> Refusal | None:
    """For a Txn-Token already verified on this request: the refusal when it is not of `scope`."""
    if scope is None or token.claims.scope == scope:
        return None
    return txn_refusal_for(VerificationError("wrong_purpose", f"Txn-Token is for {token.claims.scope!r}"))


def _txn_refused(exc: VerificationError, path: str, token: str) -> Refusal:
    log.info(
        "txn_token_refused reason=%s detail=%s path=%s token_sha256=%s",
        exc.reason, exc.detail, path, token_hash(token),
    )  # fmt: skip
    return txn_refusal_for(exc)
