"""RFC 6750 on the wire: reading a bearer token from a request, and answering a refusal.

Shared by the ASGI middleware, the Litestar guard and the ambassador so all three answer alike. The
challenge is deliberately opaque (RFC 6750 §3.1 codes only, no description): the precise reason goes
to the service's log, not to a caller who may be probing.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from exchange.verify.errors import VerificationError

# RFC 6750 §2.1: "Bearer" 1*SP b64token, the scheme case-insensitive.
_BEARER: Final = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *$")
_SCOPE_SAFE: Final = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6749 scope-token characters


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


def challenge(error: VerificationError | None, *, purpose: str | None = None) -> tuple[int, str]:
    """(status, WWW-Authenticate value) for a request without a token (error None) or a refused one.

    A valid token for another purpose (or an operation its authorization_details do not cover) is
    403 insufficient_scope, naming the scope needed; every other refusal is 401 invalid_token.
    """
    if error is None:
        # §3.1: a request with no authentication information gets no error code.
        return 401, "Bearer"
    if error.reason == "wrong_purpose":
        if purpose and _SCOPE_SAFE.match(purpose):
            return 403, f'Bearer error="insufficient_scope", scope="{purpose}"'
        return 403, 'Bearer error="insufficient_scope"'
    return 401, 'Bearer error="invalid_token"'


def token_hash(token: str) -> str:
    """A short SHA-256 of a token, to correlate log lines without logging the token."""
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()[:16]
