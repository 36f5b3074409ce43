"""The store contract: the only persistence the exchange has, with an SQLite and a PostgreSQL body.

Every method is a single short transaction. Implementations raise `StoreUnavailable` when the database
cannot be reached or times out, so the app can answer 503 instead of hanging or guessing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

# One outage type for the whole stack: rules catch it too, so it lives with their protocol.
from rules.store import RuleStore, StoreUnavailable
from schemas.records import AuditRecord, DenialCount, KeyState, StoredKey

__all__ = [
    "AddKey",
    "AuditCount",
    "AuditFilter",
    "KeyChange",
    "KeyConflict",
    "MoveKey",
    "RewrapKey",
    "RuleStore",
    "Store",
    "StoreUnavailable",
]


@dataclass(frozen=True, slots=True)
class AddKey:
    """Insert a new key (as `next`, or as `current` when there is none)."""

    key: StoredKey


@dataclass(frozen=True, slots=True)
class MoveKey:
    """Move `kid` from `from_state` to `to_state` at `at`; retiring destroys its private half."""

    kid: str
    from_state: KeyState
    to_state: KeyState
    at: float
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class RewrapKey:
    """Replace the ciphertext `was` of `kid` by `private_jwk`, sealed under the KEK `kek_id`."""

    kid: str
    private_jwk: bytes
    kek_id: str
    was: bytes


KeyChange = AddKey | MoveKey | RewrapKey


class KeyConflict(ValueError):
    """A planned key change no longer fits the stored keys; nothing was changed."""


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which audit records to read: every field set must match exactly (`since` <= time < `until`)."""

    sub: str | None = None
    client_id: str | None = None
    purpose: str | None = None
    decision: str | None = None
    denial: str | None = None
    request_id: str | None = None
    jti: str | None = None
    txn: str | None = None
    since: float | None = None
    until: float | None = None


@dataclass(frozen=True, slots=True)
class AuditCount:
    """How many records share one outcome: the decision, its OAuth error and its denial code."""

    decision: str
    error: str | None
    denial: str | None
    count: int


class Store(RuleStore, Protocol):
    """Everything the exchange persists; `RuleStore` (what rules read and count) is part of it."""

    async def open(self) -> None:
        """Connect (and migrate, where configured)."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless a trivial query succeeds now."""

    # Signing keys
    async def insert_key(self, key: StoredKey) -> None: ...

    async def list_keys(self) -> list[StoredKey]:
        """All keys, newest first."""

    async def change_keys(
        self, plan: Callable[[list[StoredKey]], Sequence[KeyChange]]
    ) -> list[KeyChange]:
        """Apply `plan(keys)` atomically: one transaction that takes the key lock first (PostgreSQL: an
        advisory lock; SQLite: the write lock), reads every key, calls `plan` (pure, quick, no I/O) and
        applies the changes it returns, in order; returns them. Whatever `plan` raises rolls back
        (nothing changes) and propagates; a change that touches no row raises KeyConflict. Two
        processes changing keys at once therefore serialise, and the second plans on the first's result.
        """

    async def keys_version(self) -> int:
        """A number that changes whenever the signing keys change (any process, any replica)."""

    async def watch_keys(
        self,
        on_change: Callable[[], Awaitable[None]],
        *,
        known_version: int | None = None,
        poll_interval: float = 2.0,
    ) -> None:
        """Await `on_change()` after each key change seen after `known_version`, until cancelled.

        Survives store outages and callback errors; a rotation reaches every replica within seconds.
        """

    # Audit
    async def append_audit(self, records: Sequence[AuditRecord]) -> None:
        """Append a batch in one transaction: all are committed when this returns, or none."""

    async def list_audit(
        self, where: AuditFilter | None = None, *, limit: int = 100, before: int | None = None
    ) -> list[AuditRecord]:
        """Matching records, newest first (by `seq`); `before` is a seq: only records before it.

        Every record read back carries its `seq`, the commit-ordered sequence number of the trail.
        """

    async def export_audit(self, *, after: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Records with seq > `after`, oldest first: the cursor `exchange audit export` follows.

        Seq is handed out in commit order on both backends, so a reader that resumes after the last seq
        it saw misses nothing committed later (see docs/OPERATIONS.md, "Audit trail").
        """

    async def count_audit(self, where: AuditFilter | None = None) -> list[AuditCount]:
        """Matching records counted per (decision, error, denial), most frequent first."""

    async def purge_audit(self, before: float, *, batch: int = 10_000) -> int:
        """Retention: delete at most `batch` records older than `before` (the database refuses records
        younger than an hour), and every denial count of a window that began before it; how many went."""

    async def add_denial_counts(self, counts: Sequence[DenialCount]) -> None:
        """Add these counts to their (window, key) rows in one transaction, creating rows as needed."""

    async def list_denial_counts(self, *, since: float = 0.0, limit: int = 1000) -> list[DenialCount]:
        """Counts of windows that began at or after `since`, newest window first, biggest first."""

    # Single use and rate limits (increment_counter is in RuleStore)
    async def consume_jti(self, issuer: str, jti: str, expires_at: float) -> bool:
        """Record (issuer, jti) once: True the first time, False on every replay until it expires."""

    async def purge_expired(self, now: float) -> int:
        """Drop replay records and counters past their expiry; returns how many rows went."""
