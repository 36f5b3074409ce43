"""What a rule sees (a typed, read-only RuleContext) and what it answers (Allow or Deny).

The context is built by the exchange after the subject token is trusted and the client authenticated:
it carries verified claims, never the raw tokens or any secret, so no rule can leak one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from rules.store import RuleStore

_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class _Missing:
    """The answer of `lookup` for an absent path: distinct from a claim whose value is null."""

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()


# What decoded JSON is made of besides containers: returned as they are, without the ABC checks below.
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def freeze(value: Any) -> Any:
    """A deep read-only copy: mappings become MappingProxyType, lists become tuples."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    scalars = _SCALARS
    # Decoded JSON first (claims are a dict of mostly scalars, with str keys; trust.py hands them over
    # behind a MappingProxyType, whose copy() is its dict's): copied whole in C, then only the
    # containers in it replaced; an ABC check costs more than the copy.
    if kind is dict or kind is MappingProxyType:
        frozen = value.copy()
        if type(frozen) is not dict:  # a proxy of some other mapping
            return _freeze_mapping(value)
        for k, v in value.items():
            if type(k) is not str:
                return _freeze_mapping(value)
            if type(v) not in scalars:
                frozen[k] = freeze(v)
        return MappingProxyType(frozen)
    if kind is list:
        for v in value:
            if type(v) not in scalars:
                return tuple([v if type(v) in scalars else freeze(v) for v in value])
        return tuple(value)
    if isinstance(value, Mapping):
        return _freeze_mapping(value)
    if kind is tuple or isinstance(value, list | tuple):
        return tuple([v if type(v) in scalars else freeze(v) for v in value])
    return value


def _freeze_mapping(value: Mapping[Any, Any]) -> MappingProxyType[str, Any]:
    scalars = _SCALARS
    return MappingProxyType(
        {k if type(k) is str else str(k): v if type(v) in scalars else freeze(v) for k, v in value.items()}
    )


def thaw(value: Any) -> Any:
    """The inverse of `freeze`, for embedding validated values in a token."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def lookup(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path ("realm_access.roles"), or MISSING.

    A key that itself contains dots (URL-named claims such as "https://example.com/roles") wins over
    splitting, and the longest matching prefix is tried first, so both styles resolve.
    """
    if path in claims:
        return claims[path]
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        inner = claims.get(head, MISSING)
        if isinstance(inner, Mapping):
            found = lookup(inner, ".".join(parts[cut:]))
            if found is not MISSING:
                return found
    return MISSING


@dataclass(frozen=True, slots=True)
class Allow:
    """The rule is satisfied."""


@dataclass(frozen=True, slots=True)
class Deny:
    """The rule refuses: `code` is the stable denial code (lower snake case), `description` says why.

    `acr_values` / `max_age` (or `step_up=True`) turn the answer into an RFC 9470 step-up:
    the client may re-authenticate the user as hinted and retry. `retry_after` (whole seconds, at
    least 1) makes it a rate limit: HTTP 429 with `Retry-After`, the time until the client may succeed.
    """

    code: str
    description: str
    acr_values: str | None = None
    max_age: int | None = None
    step_up: bool = False
    retry_after: int | None = None

    def __post_init__(self) -> None:
        if not _CODE.match(self.code):
            raise ValueError(f"denial code {self.code!r} must be lower snake case, at most 64 characters")
        wait = self.retry_after
        if wait is not None and (isinstance(wait, bool) or not isinstance(wait, int) or wait < 1):
            raise ValueError(f"retry_after must be a whole number of seconds >= 1, got {self.retry_after!r}")


class RuleDatabase:
    """The read-only SQL handle python rules get as `ctx.db`, backend neutral.

    Parameters are written `$1, $2, ...` for both backends (asyncpg's native style, and a valid named
    parameter in SQLite). The store runs each query in a read-only transaction with a timeout and a row
    cap, so a rule can look things up but never write or hang the exchange.
    """

    __slots__ = ("_store",)

    def __init__(self, store: RuleStore | None) -> None:
        self._store = store

    async def fetch(self, sql: str, *params: object) -> list[Mapping[str, Any]]:
        """All rows (at most the store's row cap), each a read-only mapping of column to value."""
        if self._store is None:
            # Fails the rule closed (rule_error) rather than guessing at a backend.
            raise RuntimeError("no store: rule queries are unavailable")
        rows = await self._store.rule_query(sql, params)
        return [MappingProxyType(dict(row)) for row in rows]

    async def fetchrow(self, sql: str, *params: object) -> Mapping[str, Any] | None:
        """The first row, or None."""
        rows = await self.fetch(sql, *params)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *params: object) -> Any:
        """The first column of the first row, or None."""
        row = await self.fetchrow(sql, *params)
        return next(iter(row.values())) if row else None


@dataclass(frozen=True, slots=True)
class RuleContext:
    """Everything a rule may base a decision on, already verified, deeply read-only.

    subject: the subject token's verified claims; details: the validated authorization_details;
    actor_chain: the actors acting for the subject, current actor first (from the `act` claim);
    now: epoch seconds (injected, so decisions are reproducible); store: what rules read and count
    (`rules.store.RuleStore`; built-in rate_limit counts through it; python rules should use `ctx.db`).
    dry_run: `exchange rules explain` evaluates without side effects (rate_limit does not count).
    """

    subject: Mapping[str, Any]
    issuer: str
    client_id: str
    purpose: str
    audience: str
    details: Sequence[Mapping[str, Any]] = ()
    actor_chain: tuple[Mapping[str, Any], ...] = ()
    now: float = field(default_factory=time.time)
    store: RuleStore | None = None
    dry_run: bool = False

    def __post_init__(self) -> None:
        # Rules are plug-ins (python rules are operator code): nothing they do changes what the
        # exchange will mint or what the next rule sees.
        object.__setattr__(self, "subject", freeze(self.subject))
        object.__setattr__(self, "details", freeze(list(self.details)) if self.details else ())
        object.__setattr__(self, "actor_chain", freeze(list(self.actor_chain)) if self.actor_chain else ())

    @property
    def sub(self) -> str | None:
        """The subject identifier (`sub` claim), when it is a string."""
        value = self.subject.get("sub")
        return value if isinstance(value, str) else None

    def claim(self, path: str, default: Any = None) -> Any:
        """A subject claim by dotted path, or `default`."""
        value = lookup(self.subject, path)
        return default if value is MISSING else value

    @property
    def db(self) -> RuleDatabase:
        """Read-only SQL through the exchange's store (see RuleDatabase)."""
        return RuleDatabase(self.store)

    def __repr__(self) -> str:
        # Claims stay out of reprs (tracebacks, debug logs): the identity and purpose are enough.
        return (
            f"RuleContext(purpose={self.purpose!r}, client_id={self.client_id!r}, "
            f"issuer={self.issuer!r}, sub={self.sub!r})"
        )
