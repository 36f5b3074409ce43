"""What `PurposeTokenClient.get` raises instead of a token: one family, one type per thing an app does.

Every answer of the exchange that is not a token becomes exactly one of these (`error_from_answer` is the
one place that decides which); so does a transport failure. None of them carries a token, a secret or
a key: messages hold the OAuth error code, the denial code, the exchange's description and the request
id, and `repr` shows the same. What an app should do with each is in docs/CLIENTS.md.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from typing import Final

import msgspec

# RFC 6749 §5.2 codes (and RFC 9470's) the mapping below branches on.
INVALID_CLIENT: Final = "invalid_client"
INSUFFICIENT_USER_AUTHENTICATION: Final = "insufficient_user_authentication"
INVALID_AUTHORIZATION_DETAILS: Final = "invalid_authorization_details"
TEMPORARILY_UNAVAILABLE: Final = "temporarily_unavailable"
RATE_LIMITED: Final = "rate_limited"
# Library codes for failures that have no OAuth error: nothing came back, or nothing readable.
UNREACHABLE: Final = "unreachable"
INVALID_RESPONSE: Final = "invalid_response"
# Answers worth another attempt: the exchange (or a proxy in front of it) is briefly unable to serve.
RETRYABLE_STATUSES: Final = frozenset({502, 503, 504})


class PurposeTokenError(Exception):
    """The base of every failure. `error` is the OAuth error code (or `unreachable` /
    `invalid_response`), `denial` the exchange's stable denial code when it gave one, `request_id` the
    id the exchange audited this attempt under (quote it when asking its operators)."""

    def __init__(
        self,
        error: str,
        description: str | None = None,
        *,
        denial: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.error = error
        self.description = description
        self.denial = denial
        self.status = status
        self.request_id = request_id
        super().__init__(self._message())

    def _message(self) -> str:
        text = self.error if self.description is None else f"{self.error}: {self.description}"
        if self.denial is not None:
            text += f" (denial {self.denial})"
        if self.request_id is not None:
            text += f" [request {self.request_id}]"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._message()!r})"


class StepUpRequired(PurposeTokenError):
    """RFC 9470: the user's login is too weak or too old for this purpose. Send the user back to the
    identity provider with `acr_values` and/or `max_age` (as given, either may be None), then call
    again with the new identity token."""

    def __init__(
        self,
        error: str,
        description: str | None = None,
        *,
        acr_values: str | None = None,
        max_age: int | None = None,
        denial: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.acr_values = acr_values
        self.max_age = max_age
        super().__init__(error, description, denial=denial, status=status, request_id=request_id)


class PurposeDenied(PurposeTokenError):
    """A business rule said no. `denial` is the stable code to branch on; `description` names the
    requirement in words an app may show the user."""


class RateLimited(PurposeTokenError):
    """Too many tokens for this subject or client. `retry_after` (seconds) when the exchange said."""

    def __init__(
        self,
        error: str,
        description: str | None = None,
        *,
        retry_after: float | None = None,
        denial: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(error, description, denial=denial, status=status, request_id=request_id)


class Unavailable(PurposeTokenError):
    """The exchange could not answer (503, a 5xx, no connection, a timeout), after `attempts`
    attempts. `retry_after` (seconds) when the exchange said how long to wait."""

    def __init__(
        self,
        error: str,
        description: str | None = None,
        *,
        retry_after: float | None = None,
        retryable: bool = True,
        attempts: int = 1,
        denial: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        # False when another attempt could repeat a request the exchange may already have acted on.
        self.retryable = retryable
        self.attempts = attempts
        super().__init__(error, description, denial=denial, status=status, request_id=request_id)


class ClientAuthFailed(PurposeTokenError):
    """The exchange did not accept this app's credentials (`invalid_client`): a configuration error."""


class InvalidRequest(PurposeTokenError):
    """The exchange refused the request itself: unknown purpose or audience, a purpose this client may
    not ask for, malformed authorization_details, an unacceptable identity token, or an answer this
    library could not read. A bug or a configuration problem, not something the user can fix (except
    an identity token that is no longer acceptable: sign the user in again)."""


class _ErrorBody(msgspec.Struct):
    # Lenient on purpose (RFC 6749 §5.1: a client ignores members it does not know).
    error: str
    error_description: str | None = None
    denial: str | None = None
    acr_values: str | None = None
    max_age: int | None = None


_ERROR_BODY: Final = msgspec.json.Decoder(_ErrorBody)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """RFC 9110 §10.2.3 `Retry-After`: delay-seconds or an HTTP-date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, delay) if math.isfinite(delay) else None


def error_from_answer(
    status: int, headers: Mapping[str, str], body: bytes, *, request_id: str | None
) -> PurposeTokenError:
    """The typed error for an HTTP answer that carries no token. The one place this is decided."""
    retry_after = retry_after_seconds(headers.get("retry-after"))
    try:
        answer = _ERROR_BODY.decode(body)
    except msgspec.DecodeError:
        answer = None
    if answer is None:
        # No RFC 6749 body: a proxy's page, or not the exchange at all.
        if status >= 500:
            return Unavailable(
                TEMPORARILY_UNAVAILABLE if status in RETRYABLE_STATUSES else "server_error",
                f"HTTP {status} without an OAuth error body",
                retry_after=retry_after,
                retryable=status in RETRYABLE_STATUSES,
                status=status,
                request_id=request_id,
            )
        if status == 429:
            return RateLimited(
                RATE_LIMITED, "HTTP 429", retry_after=retry_after, status=status, request_id=request_id
            )
        return InvalidRequest(
            INVALID_RESPONSE,
            f"HTTP {status} without an OAuth error body",
            status=status,
            request_id=request_id,
        )

    error, description, denial = answer.error, answer.error_description, answer.denial
    if status == 429 or denial == RATE_LIMITED:
        return RateLimited(
            error, description, retry_after=retry_after, denial=denial, status=status, request_id=request_id
        )
    if error == TEMPORARILY_UNAVAILABLE or status >= 500:
        return Unavailable(
            error,
            description,
            retry_after=retry_after,
            retryable=status in RETRYABLE_STATUSES,
            denial=denial,
            status=status,
            request_id=request_id,
        )
    if error == INSUFFICIENT_USER_AUTHENTICATION:
        return StepUpRequired(
            error,
            description,
            acr_values=answer.acr_values,
            max_age=answer.max_age,
            denial=denial,
            status=status,
            request_id=request_id,
        )
    kind: type[PurposeTokenError] = InvalidRequest
    if error == INVALID_CLIENT or status == 401:
        kind = ClientAuthFailed
    elif denial is not None and error != INVALID_AUTHORIZATION_DETAILS:
        # A denial code means a policy decided (RFC 8693 §2.2.2 plus the exchange's `denial`), except
        # RFC 9396 schema failures: those say the app built its authorization_details wrong.
        kind = PurposeDenied
    return kind(error, description, denial=denial, status=status, request_id=request_id)
