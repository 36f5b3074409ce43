"""What rules need from persistence, and nothing more: count (`rate_limit`) and read (python rules'
`ctx.db`). Both of the exchange's stores implement this protocol (`exchange.store.base.Store` extends
it), so `rules/` depends on no server module and a rule can be tested against any implementation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class StoreUnavailable(Exception):
    """The database could not be reached, or did not answer in time: an outage, not a verdict.

    The engine turns it into a retryable `store_unavailable` denial (503) rather than `rule_error`.
    """


class RuleStore(Protocol):
    """What rules read and count. Implementations raise StoreUnavailable on an outage."""

    async def increment_counter(self, key: str, window_start: int, expires_at: float) -> int:
        """Add one to the counter for (key, window_start) and return the new count."""

    async def rule_query(
        self, sql: str, params: Sequence[object], *, max_rows: int = 100
    ) -> list[Mapping[str, Any]]:
        """One read-only query for python rules: `$1..$n` parameters, a timeout, at most `max_rows` rows.

        A query the database refuses (bad SQL, an attempted write) is the rule's own bug: ValueError.
        """
