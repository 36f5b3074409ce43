"""The signing-key lifecycle, as pure functions of the stored keys and an explicit `now`.

    next (published, not signing) -> current (signs; exactly one) -> previous (published) -> retired

Nothing here does I/O or reads a clock: each function takes the keys as stored and `now`, and returns
the changes to make (`exchange.store.base.KeyChange`), which the store applies atomically under its
key lock (`Store.change_keys`), re-planning on what it finds there. So every replica may run
`advance` on a timer, the CLI may stage, rotate or revoke at the same moment, and the result is the
same as if they had taken turns; tests drive the whole lifecycle with any `now` they like.

The timing is derived, never guessed (`Timing`):
- a `next` key becomes current no sooner than `publish_before_signing` after it was first published:
  the longest an honest JWKS cache holds a set (the configured max-age, and never less than what our
  own verifiers cache at least) plus a margin for every replica to pick it up; so every verifier that
  honours the max-age has it before the first token it signed arrives;
- a `previous` key is retired (unpublished, its private half destroyed) no sooner than
  `publish_after_signing` after it stopped signing: the longest token lifetime plus the largest leeway
  any verifier of ours allows plus the cache lifetime; so no token it signed is refused for want of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import msgspec

from exchange.store.base import AddKey, KeyChange, MoveKey, RewrapKey
from exchange.verify.jwks import DEFAULT_MIN_TTL
from schemas.base import MAX_LEEWAY, MAX_TOKEN_LIFETIME
from schemas.config import Settings
from schemas.records import StoredKey


class LifecycleError(ValueError):
    """An operator's request that does not fit the stored keys (one sentence); nothing was changed."""


@dataclass(frozen=True, slots=True)
class Timing:
    """How long keys stay published around their signing period; see the module docstring."""

    jwks_max_age: float = 300.0
    margin: float = 60.0
    # The longest lifetime of any token the keys sign (purpose tokens and Txn-Tokens).
    longest_ttl: float = float(MAX_TOKEN_LIFETIME)
    rotate_every: float | None = None

    @classmethod
    def of(cls, settings: Settings) -> Timing:
        ttls = [p.ttl for p in settings.purposes.values()]
        if settings.txn_tokens is not None:
            ttls.append(settings.txn_tokens.ttl)
            ttls += [p.txn_token.ttl for p in settings.purposes.values() if p.txn_token and p.txn_token.ttl]
        return cls(
            jwks_max_age=float(settings.signing.jwks_max_age),
            margin=float(settings.signing.activation_margin),
            longest_ttl=float(max(ttls, default=MAX_TOKEN_LIFETIME)),
            rotate_every=settings.signing.rotate_every_seconds,
        )

    def with_ttls_of(self, settings: Settings) -> Timing:
        """This timing with the longest token lifetime of `settings` (purposes reload; [signing] not)."""
        return replace(self, longest_ttl=Timing.of(settings).longest_ttl)

    @property
    def cache_lifetime(self) -> float:
        """The longest an honest cache holds our JWKS: its max-age, or our verifiers' floor if longer."""
        return max(self.jwks_max_age, DEFAULT_MIN_TTL)

    @property
    def publish_before_signing(self) -> float:
        return self.cache_lifetime + self.margin

    @property
    def publish_after_signing(self) -> float:
        return self.longest_ttl + MAX_LEEWAY + self.cache_lifetime


def check(settings: Settings) -> list[str]:
    """What `config check` refuses about the signing settings (one sentence each)."""
    t = Timing.of(settings)
    period = settings.signing.rotate_every_seconds
    lifecycle = t.publish_before_signing + t.publish_after_signing
    if period is not None and period < lifecycle:
        return [
            f"signing.rotate_every: {settings.signing.rotate_every} is shorter than one key's lifecycle "
            f"({lifecycle:.0f} s: published {t.publish_before_signing:.0f} s before signing, and "
            f"{t.publish_after_signing:.0f} s after); keys would be replaced before verifiers could "
            "follow: lengthen it or lower signing.jwks_max_age"
        ]
    return []


def activates_at(key: StoredKey, t: Timing) -> float | None:
    """When a `next` key becomes current; for a key that signed, when it began to."""
    if key.state == "next":
        return key.created_at + t.publish_before_signing
    return key.activated_at


def retires_at(key: StoredKey, t: Timing) -> float | None:
    """When a `previous` key is retired; for a retired key, when it was."""
    if key.state == "previous":
        return (key.deactivated_at or key.created_at) + t.publish_after_signing
    return key.retired_at


def rotates_at(key: StoredKey, t: Timing) -> float | None:
    """When scheduled rotation stages a successor of the `current` key (None: not scheduled)."""
    if key.state != "current" or t.rotate_every is None:
        return None
    return (key.activated_at or key.created_at) + t.rotate_every


def current_of(keys: Sequence[StoredKey]) -> StoredKey | None:
    return next((k for k in keys if k.state == "current"), None)


def next_of(keys: Sequence[StoredKey]) -> StoredKey | None:
    return next((k for k in keys if k.state == "next"), None)


def published(keys: Sequence[StoredKey]) -> list[StoredKey]:
    """What the JWKS serves: every key that is not retired (a revoked key is retired)."""
    return [k for k in keys if k.state != "retired"]


@dataclass(frozen=True, slots=True)
class Step:
    """What `advance` decided: the changes, and whether it would have made a key had it been given one."""

    changes: tuple[KeyChange, ...] = ()
    wants_key: bool = False


def _as(candidate: StoredKey, state: str, now: float) -> StoredKey:
    return msgspec.structs.replace(
        candidate,
        state=state,
        created_at=now,
        activated_at=now if state == "current" else None,
    )


def _promote(current: StoredKey | None, nxt: StoredKey, now: float) -> list[KeyChange]:
    demote: list[KeyChange] = [] if current is None else [MoveKey(current.kid, "current", "previous", now)]
    return [*demote, MoveKey(nxt.kid, "next", "current", now)]


def advance(
    keys: Sequence[StoredKey], now: float, t: Timing, *, algorithm: str, candidate: StoredKey | None
) -> Step:
    """The scheduled step every replica runs: retire what is due, promote a `next` key that is due,
    stage a successor when rotation is due or `algorithm` changed; with no current key at all, make
    one at once (a first start; or promote a staged key rather than sign with nothing).

    `candidate` is a fresh key of `algorithm` to stage or make current; without one, `wants_key` says
    one is needed (the caller makes it and plans again under the lock).
    """
    changes: list[KeyChange] = [
        MoveKey(k.kid, "previous", "retired", now)
        for k in keys
        if k.state == "previous" and (retires_at(k, t) or 0.0) <= now
    ]
    current, nxt = current_of(keys), next_of(keys)
    if current is None:
        if nxt is not None:
            return Step((*changes, *_promote(None, nxt, now)))
        if candidate is None:
            return Step(tuple(changes), wants_key=True)
        return Step((*changes, AddKey(_as(candidate, "current", now))))
    if nxt is not None:
        if (activates_at(nxt, t) or 0.0) <= now:
            changes += _promote(current, nxt, now)
        return Step(tuple(changes))
    due = rotates_at(current, t)
    if current.alg != algorithm or (due is not None and due <= now):
        if candidate is None:
            return Step(tuple(changes), wants_key=True)
        changes.append(AddKey(_as(candidate, "next", now)))
    return Step(tuple(changes))


def stage(keys: Sequence[StoredKey], now: float, candidate: StoredKey) -> list[KeyChange]:
    """`exchange keys rotate`: publish `candidate` as the next key (current at once only when there is
    none). Nothing when a key is staged already: rotating twice is rotating once."""
    if next_of(keys) is not None:
        return []
    if current_of(keys) is None:
        return [AddKey(_as(candidate, "current", now))]
    return [AddKey(_as(candidate, "next", now))]


def stage_imported(keys: Sequence[StoredKey], now: float, imported: StoredKey) -> list[KeyChange]:
    """`exchange keys import`: the operator's own key becomes the next key; refused if one is staged."""
    staged = next_of(keys)
    if staged is not None:
        raise LifecycleError(
            f"key {staged.kid} is already staged as next; wait until it is current, or revoke it first"
        )
    if any(k.kid == imported.kid for k in keys):
        raise LifecycleError(f"key {imported.kid} is already in the store")
    return stage(keys, now, imported)


def rotate_now(keys: Sequence[StoredKey], now: float, candidate: StoredKey) -> list[KeyChange]:
    """`exchange keys rotate --now`: a key signs from `now`: the staged one if any (it has been
    published since it was staged), else `candidate`, published this instant."""
    current, nxt = current_of(keys), next_of(keys)
    if nxt is not None:
        return _promote(current, nxt, now)
    demote: list[KeyChange] = [] if current is None else [MoveKey(current.kid, "current", "previous", now)]
    return [*demote, AddKey(_as(candidate, "current", now))]


def replace_all(keys: Sequence[StoredKey], now: float, candidate: StoredKey) -> list[KeyChange]:
    """`exchange keys rotate --now --kek-lost`: the KEK that sealed the keys is gone, so none can sign
    again: every key still published is revoked, and `candidate` (sealed under the new KEK) signs."""
    revoked: list[KeyChange] = [
        MoveKey(k.kid, k.state, "retired", now, revoked=True) for k in keys if k.state != "retired"
    ]
    return [*revoked, AddKey(_as(candidate, "current", now))]


def revoke(keys: Sequence[StoredKey], kid: str, now: float, candidate: StoredKey) -> list[KeyChange]:
    """`exchange keys revoke`: `kid` is retired at once (unpublished, destroyed); if it was current, the
    staged key signs from now, or `candidate` when none is staged. Nothing if it is retired already."""
    key = next((k for k in keys if k.kid == kid), None)
    if key is None:
        raise LifecycleError(f"no signing key {kid!r} in the store (see `exchange keys list`)")
    if key.state == "retired":
        return []
    changes: list[KeyChange] = [MoveKey(kid, key.state, "retired", now, revoked=True)]
    if key.state == "current":
        nxt = next_of(keys)
        if nxt is not None:
            changes.append(MoveKey(nxt.kid, "next", "current", now))
        else:
            changes.append(AddKey(_as(candidate, "current", now)))
    return changes


def rewrap(keys: Sequence[StoredKey], kek_id: str, reseal: Callable[[StoredKey], bytes]) -> list[KeyChange]:
    """`exchange keys rewrap`: every key with a private half not yet sealed under `kek_id` is resealed."""
    return [
        RewrapKey(k.kid, reseal(k), kek_id, was=k.private_jwk)
        for k in keys
        if k.private_jwk is not None and k.kek_id != kek_id
    ]
