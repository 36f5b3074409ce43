"""One access decision per request, shared by every placement: target → route → credentials → token.

Every integration (ASGI, Starlette/FastAPI, Litestar, Flask, Django, WSGI), the ambassador and the
gateway call these and render the `Refusal` they return; none of them decides on its own. Steps, in
order: a non-canonical method or path is refused (400, never normalised: the service behind us must
not resolve a path we matched differently); the route table picks the purpose (no route: 404, open:
no token); all values of the credentials header are read (two of them: 400); the token is verified.

The verifier and the header name are parameters, so a second token kind (issue 13's Txn-Token) is one
more call with its own verifier and header, answered with the same refusal shape.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

from exchange.verify.bearer import NO_ROUTE, Refusal, non_canonical, read_bearer, refusal_for, token_hash
from exchange.verify.claims import VerifiedClaims
from exchange.verify.errors import VerificationError
from exchange.verify.routes import Route, RouteTable, method_problem, path_problem
from exchange.verify.verifier import PurposeTokenVerifier

AUTHORIZATION: Final = "authorization"

log = logging.getLogger("exchange.verify")

Outcome = tuple[VerifiedClaims | None, Refusal | None]


def route_for(routes: RouteTable, method: str, raw_path: bytes, path: str) -> Route | Refusal:
    """The route for a request target, or the refusal: non-canonical target (400) or no route (404)."""
    problem = method_problem(method) or path_problem(raw_path)
    if problem is not None:
        return non_canonical(problem)
    route = routes.match(method, path)
    return NO_ROUTE if route is None else route


async def check_token(
    verifier: PurposeTokenVerifier, credentials: Sequence[str | bytes], purpose: str | None, path: str
) -> Outcome:
    """Verify the bearer token among `credentials` (every value of the header) for `purpose`."""
    token = read_bearer(credentials)
    if isinstance(token, Refusal):
        return None, token
    try:
        return await verifier.averify(token, purpose=purpose), None
    except VerificationError as exc:
        return None, _refused(exc, purpose, path, token)


def check_token_sync(
    verifier: PurposeTokenVerifier, credentials: Sequence[str | bytes], purpose: str | None, path: str
) -> Outcome:
    """`check_token` for WSGI frameworks: the verifier's synchronous `verify` (it fetches keys itself)."""
    token = read_bearer(credentials)
    if isinstance(token, Refusal):
        return None, token
    try:
        return verifier.verify(token, purpose=purpose), None
    except VerificationError as exc:
        return None, _refused(exc, purpose, path, token)


async def check_request(
    verifier: PurposeTokenVerifier,
    routes: RouteTable,
    method: str,
    raw_path: bytes,
    path: str,
    credentials: Sequence[str | bytes],
) -> Outcome:
    """Decide one request: (claims, None), (None, None) on an open route, or (None, refusal)."""
    route = route_for(routes, method, raw_path, path)
    if isinstance(route, Refusal):
        return None, route
    if route.open:
        return None, None
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
    route = route_for(routes, method, raw_path, path)
    if isinstance(route, Refusal):
        return None, route
    if route.open:
        return None, None
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
