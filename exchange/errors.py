"""One exception family for everything a client may be told; one handler renders it (RFC 6749 §5.2).

`reason` is for the audit record only: it says precisely what failed (e.g. "subject_token:expired")
while the client sees the opaque `description` where telling more would help an attacker.
"""

from __future__ import annotations

# Seconds a client is told to wait after a 503 (store outage): long enough not to hammer a database
# that is failing over, short enough for a client library's bounded retry (docs/CLIENTS.md).
UNAVAILABLE_RETRY_AFTER = 2


class OAuthError(Exception):
    error: str = "invalid_request"
    status: int = 400
    # Seconds for the `Retry-After` header (RFC 9110 §10.2.3); None: no header.
    retry_after: int | None = None

    def __init__(
        self,
        description: str,
        *,
        reason: str | None = None,
        denial: str | None = None,
        acr_values: str | None = None,
        max_age: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(description)
        self.description = description
        self.reason = reason or description
        self.denial = denial
        self.acr_values = acr_values
        self.max_age = max_age
        if retry_after is not None:
            self.retry_after = retry_after


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidClient(OAuthError):
    """Client authentication failed. `basic`: the client tried the Authorization header, so the 401
    carries `WWW-Authenticate: Basic` (RFC 6749 §5.2); otherwise it carries none, since stock clients
    treat a challenge they did not answer as a protocol error rather than `invalid_client`."""

    error = "invalid_client"
    status = 401

    def __init__(self, description: str, *, basic: bool = False, reason: str | None = None) -> None:
        super().__init__(description, reason=reason)
        self.basic = basic


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class InvalidTarget(OAuthError):
    error = "invalid_target"


class InvalidAuthorizationDetails(OAuthError):
    """RFC 9396 §5: authorization_details unknown, malformed or not allowed for this purpose."""

    error = "invalid_authorization_details"


class InsufficientUserAuthentication(OAuthError):
    """RFC 9470 step-up: the client should re-authenticate the user with `acr_values` / `max_age`.

    RFC 9470 answers 401 at a resource server; at the token endpoint 401 means "bad client
    credentials" (RFC 6749 §5.2), so this is a 400 with the same error code and hints in the body.
    """

    error = "insufficient_user_authentication"


class RequestTimeout(InvalidRequest):
    """The request did not arrive within `limits.body_timeout`: HTTP 408 (RFC 9110 §15.5.9), and the
    connection is closed. The body is still RFC 6749 JSON (`invalid_request`)."""

    status = 408


class RateLimited(InvalidRequest):
    """A rate-limit denial: HTTP 429 (RFC 6585 §4) with `Retry-After`, error `invalid_request`.

    The code stays `invalid_request` (RFC 8693 §2.2.2: a request unacceptable by policy) with the
    denial code beside it; the status and the header are what say "later". See docs/RULES.md.
    """

    status = 429


class TemporarilyUnavailable(OAuthError):
    error = "temporarily_unavailable"
    status = 503
    retry_after = UNAVAILABLE_RETRY_AFTER


class ServerError(OAuthError):
    error = "server_error"
    status = 500


_BY_CODE: dict[str, type[OAuthError]] = {
    cls.error: cls
    for cls in (
        InvalidRequest,
        InvalidClient,
        InvalidGrant,
        UnauthorizedClient,
        UnsupportedGrantType,
        InvalidScope,
        InvalidTarget,
        InvalidAuthorizationDetails,
        InsufficientUserAuthentication,
        TemporarilyUnavailable,
        ServerError,
    )
}


ERROR_CODES = frozenset(_BY_CODE)


def error_class(code: str) -> type[OAuthError]:
    """The exception class for an RFC error code (a rule denial names its code as a string)."""
    return _BY_CODE[code]


class SubjectTokenInvalid(InvalidRequest):
    """RFC 8693 §2.2.2: an unacceptable subject or actor token is `invalid_request`. One opaque text."""

    def __init__(self, reason: str, *, which: str = "subject_token") -> None:
        super().__init__(f"{which} is invalid", reason=f"{which}:{reason}")


class IssuerKeysUnavailable(TemporarilyUnavailable):
    """The token's issuer is trusted but its keys could not be fetched: the token cannot be judged
    either way, and that is not the client's fault. 503 with `Retry-After`, so the (authenticated)
    client retries instead of sending its user to sign in again for a token that may be fine."""

    def __init__(self, *, which: str = "subject_token") -> None:
        super().__init__(
            f"the keys of the {which}'s issuer cannot be fetched right now; retry later",
            reason=f"{which}:jwks_unavailable",
        )


class ConfigError(Exception):
    """The configuration cannot be used; each problem is one clear line naming the key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
