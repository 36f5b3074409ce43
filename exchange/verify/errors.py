"""The one failure a verifier raises, carrying a stable reason code.

Callers branch on `reason`, never on the message: messages may change, reason codes may only be added.
The HTTP integrations answer every reason with the same opaque RFC 6750 `invalid_token` (or
`insufficient_scope` for `wrong_purpose`); the reason is for the service's own log.
"""

from __future__ import annotations

from typing import Final, Literal

Reason = Literal[
    "expired",
    "wrong_audience",
    "wrong_issuer",
    "bad_signature",
    "unknown_key",
    # The key source has no usable keys because fetching them failed (not: the kid is unknown).
    "keys_unavailable",
    "wrong_type",
    "wrong_purpose",
    "malformed",
    "replayed",
]

REASONS: Final[frozenset[str]] = frozenset(Reason.__args__)  # type: ignore[attr-defined]


class VerificationError(Exception):
    """A purpose token was refused. `reason` is one of `REASONS`; `detail` is for logs only."""

    def __init__(self, reason: Reason, detail: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown verification reason {reason!r}")
        super().__init__(reason if detail is None else f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[VerificationError], tuple[Reason, str | None]]:
        # Keeps the reason across pickling (multiprocessing pools, some task queues).
        return (type(self), (self.reason, self.detail))
