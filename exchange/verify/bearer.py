"""RFC 6750 on the wire: reading a bearer token from a request, and the one refusal every placement sends.

Shared by every integration (ASGI middleware, Starlette/FastAPI, Litestar, Flask, Django, WSGI), the
ambassador and the gateway, so all of them answer alike: the same status, the same `WWW-Authenticate`
challenge and the same JSON body, `{"error": "<code>"}`. The challenge is deliberately opaque (RFC 6750
§3.1 codes only, no description): the precise reason goes to the service's log, not to a caller who may
be probing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Final, NamedTuple

import msgspec

from exchange.verify.errors import VerificationError

# RFC 6750 §2.1: "Bearer" 1*SP b64token, the scheme case-insensitive.
_BEARER: Final = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *$")
_SCOPE_SAFE: Final = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6749 scope-token characters


class Refusal(NamedTuple):
    """A request answered by us instead of the service: status, body error code, challenge, log reason."""

    status: int
    error: str
    www_authenticate: str | None
    # The VerificationError reason code (or "no_token", "no_route", ...), for the service's log only.
    reason: str

    @property
    def body(self) -> bytes:
        return _BODIES.get(self.error) or msgspec.json.encode({"error": self.error})

    def headers(self) -> list[tuple[str, str]]:
        """Response headers besides Content-Length (which each framework sets its own way)."""
        headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        if self.www_authenticate is not None:
            headers.append(("WWW-Authenticate", self.www_authenticate))
        return headers


_BODIES: Final = {
    code: msgspec.json.encode({"error": code})
    for code in ("invalid_token", "insufficient_scope", "invalid_request", "not_found", "invalid_txn_token")
}

#: No credentials at all (or another scheme): §3.1 says the challenge then carries no error code.
NO_TOKEN: Final = Refusal(401, "invalid_token", "Bearer", "no_token")
#: Two Authorization headers (or two credentials): ambiguous, so neither is guessed at (§3.1 invalid_request).
TWO_CREDENTIALS: Final = Refusal(400, "invalid_request", 'Bearer error="invalid_request"', "two_credentials")
NO_ROUTE: Final = Refusal(404, "not_found", None, "no_route")

# The `Txn-Token` header (draft-ietf-oauth-transaction-tokens-10 §12) is not an HTTP authentication
# scheme, and a Txn-Token is not a credential (§13.12): a request without a valid one is not authorised
# (403, no challenge), in the same JSON shape. Two headers, or two tokens in one, are ambiguous (§12.1:
# exactly one), answered like two Authorization headers.
NO_TXN_TOKEN: Final = Refusal(403, "invalid_txn_token", None, "no_txn_token")
TWO_TXN_TOKENS: Final = Refusal(400, "invalid_request", None, "two_txn_tokens")


def non_canonical(reason: str) -> Refusal:
    """A request we will not interpret (method or path spelled non-canonically): 400, no challenge."""
    return Refusal(400, "invalid_request", None, reason)


def bearer_token(authorization: str | bytes | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header, or None when absent or another scheme."""
    if authorization is None:
        return None
    if isinstance(authorization, bytes):
        try:
            authorization = authorization.decode("ascii")
        except UnicodeDecodeError:
            return None
    match = _BEARER.match(authorization)
    return match.group(1) if match else None


def read_bearer(values: Sequence[str | bytes]) -> str | Refusal:
    """The bearer token from all of a request's values of its credentials header, or the refusal."""
    # A comma never occurs in a b64token: it is two headers folded into one (as WSGI servers and some
    # proxies do), and gets the answer two headers get.
    if len(values) > 1 or (values and "," in (v if isinstance(v := values[0], str) else v.decode("latin-1"))):
        return TWO_CREDENTIALS
    token = bearer_token(values[0]) if values else None
    return NO_TOKEN if token is None else token


def refusal_for(error: VerificationError, *, purpose: str | None = None) -> Refusal:
    """The answer to a presented token that failed verification.

    A valid token for another purpose (or an operation its authorization_details do not cover) is
    403 insufficient_scope, naming the scope needed; every other refusal is 401 invalid_token.
    """
    if error.reason == "wrong_purpose":
        if purpose and _SCOPE_SAFE.match(purpose):
            return Refusal(403, "insufficient_scope", f'Bearer error="insufficient_scope", scope="{purpose}"',
                           error.reason)  # fmt: skip
        return Refusal(403, "insufficient_scope", 'Bearer error="insufficient_scope"', error.reason)
    return Refusal(401, "invalid_token", 'Bearer error="invalid_token"', error.reason)


def txn_refusal_for(error: VerificationError) -> Refusal:
    """The answer to a Txn-Token that failed verification: 403, `insufficient_scope` for a valid token
    of another scope, `invalid_txn_token` otherwise (no challenge: §13.12)."""
    if error.reason == "wrong_purpose":
        return Refusal(403, "insufficient_scope", None, error.reason)
    return Refusal(403, "invalid_txn_token", None, error.reason)


def token_hash(token: str) -> str:
    """A short SHA-256 of a token, to correlate log lines without logging the token."""
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()[:16]
