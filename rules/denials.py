"""What a client is told when a purpose policy says no, and what an operator is told at start-up.

A denial is explicit by design (unlike a bad subject token, which stays opaque): the stable `code` is
a public contract a client may branch on, e.g. to trigger a step-up login (RFC 9470) on
`insufficient_user_authentication`. Descriptions name the requirement, never a token or claim value.
"""

from __future__ import annotations

from dataclasses import dataclass

# RFC 8693 §2.2.2 / RFC 6749 §5.2 error codes a denial may carry.
INVALID_REQUEST = "invalid_request"
INVALID_TARGET = "invalid_target"
# RFC 9470 §3: the login behind the subject token is too weak or too old; the client re-authenticates.
INSUFFICIENT_USER_AUTHENTICATION = "insufficient_user_authentication"
# RFC 9396 §5: the authorization_details parameter names an unknown type or does not fit its schema.
INVALID_AUTHORIZATION_DETAILS = "invalid_authorization_details"

RULE_ERROR = "rule_error"
STORE_UNAVAILABLE = "store_unavailable"


@dataclass(frozen=True, slots=True)
class Denial:
    """A business-rule refusal: the OAuth `error`, the stable `denial` code and step-up hints.

    `retry_after` (seconds) is set for rate limits only: the exchange answers 429 with `Retry-After`.
    """

    code: str
    description: str
    error: str = INVALID_REQUEST
    acr_values: str | None = None
    max_age: int | None = None
    retry_after: int | None = None


class DenialError(Exception):
    """Raised while reading the request (authorization_details, delegation) to refuse it."""

    def __init__(self, denial: Denial) -> None:
        super().__init__(f"{denial.code}: {denial.description}")
        self.denial = denial


class PolicyError(Exception):
    """The configured purpose policies cannot be compiled; one message per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in purpose policies:\n{lines}")


def store_unavailable() -> Denial:
    """A rule could not reach the store (rate counts, python rule lookups): retryable, not a verdict."""
    return Denial(
        code=STORE_UNAVAILABLE,
        description="a required validation is temporarily unavailable",
        error="temporarily_unavailable",
    )


def rule_error(description: str = "a required validation could not be completed") -> Denial:
    """The fail-closed answer when a rule raised, timed out or returned nonsense."""
    return Denial(code=RULE_ERROR, description=description)
