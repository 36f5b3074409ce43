"""When a failed attempt is tried again: bounded attempts, capped exponential backoff, jitter.

Only `Unavailable` answers the exchange marked retryable (503 and a proxy's 502/504) and connections
that never reached it are retried; a rate limit, a denial or a read timeout is not (the exchange may
already have issued and audited a token, and counted it against a limit). A `Retry-After` longer than
`max_delay` ends the retries at once: an app request should fail fast with the hint, not sleep.
Jitter spreads the retries of many app instances hit by the same outage.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from exchange.client.errors import Unavailable


@dataclass(frozen=True, slots=True)
class Retry:
    """`attempts` in all (1: never retry); delay n is in [d/2, d], d = min(max_delay, base * 2**(n-1))."""

    attempts: int = 3
    base_delay: float = 0.2
    max_delay: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError("Retry needs attempts >= 1 and 0 <= base_delay <= max_delay")

    def delay(self, failure: Unavailable, attempt: int) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None: give up and raise `failure`."""
        if not failure.retryable or attempt >= self.attempts:
            return None
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        wait = random.uniform(ceiling / 2, ceiling)  # noqa: S311 (spreading load, not a secret)
        if failure.retry_after is not None:
            if failure.retry_after > self.max_delay:
                return None
            wait = max(wait, failure.retry_after)
        return wait
