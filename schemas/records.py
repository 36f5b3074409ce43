"""What the store keeps: signing keys (private half encrypted) and audit records."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.base import Base

KeyState = Literal["next", "current", "previous", "retired"]
Decision = Literal["granted", "denied"]


class StoredKey(Base, frozen=True):
    """A signing key. `private_jwk` is AES-GCM ciphertext under the KEK named by `kek_id`, never
    plaintext, and NULL once the key is retired (the database refuses anything else).

    next: published, not signing yet; current: signs and is published (exactly one); previous:
    published (tokens it signed may still be alive), no longer signs; retired: neither, and its private
    half is destroyed. `revoked`: retired at once by `exchange keys revoke`, not on schedule.
    """

    kid: str
    alg: str
    state: KeyState
    created_at: float
    public_jwk: str
    private_jwk: bytes | None
    activated_at: float | None = None
    deactivated_at: float | None = None
    retired_at: float | None = None
    revoked: bool = False
    kek_id: str | None = None

    def __repr__(self) -> str:
        return f"StoredKey(kid={self.kid!r}, alg={self.alg!r}, state={self.state!r})"


class RuleOutcome(Base, frozen=True, omit_defaults=True):
    rule: str
    outcome: Literal["allow", "deny", "error"]
    code: str | None = None


class AuditRecord(Base, frozen=True, omit_defaults=True):
    """One decision. Never the token itself: the issued token is named by its jti."""

    time: float
    request_id: str
    decision: Decision
    client_id: str | None = None
    issuer: str | None = None
    sub: str | None = None
    purpose: str | None = None
    audience: str | None = None
    error: str | None = None
    denial: str | None = None
    reason: str | None = None
    jti: str | None = None
    exp: int | None = None
    actor: str | None = None
    # The transaction of a Txn-Token request (draft-ietf-oauth-transaction-tokens-10 §13.2): the issued
    # token's, or the replaced token's when a replacement is refused.
    txn: str | None = None
    rules: list[RuleOutcome] = msgspec.field(default_factory=list)
    # The W3C trace id of the request, when tracing is on: from the audit record to its trace.
    trace_id: str | None = None
    # The trail's sequence number, assigned by the store in commit order; None until it is written.
    seq: int | None = None


class DenialCount(Base, frozen=True):
    """How many denials before client authentication one key had in one window (docs/ARCHITECTURE.md,
    "Audit"): such a caller is not yet anyone, so its refusals are counted, not recorded one by one.

    `client_id` is as the request gave it (bounded), `source` the peer address; either may be the
    fold marker `OTHER` when a window had more distinct keys than `[audit] tally_keys`.
    """

    window_start: int
    window_seconds: int
    reason: str
    error: str
    client_id: str | None
    source: str | None
    count: int


#: What a folded key part reads as: no configured client_id or address contains a space.
OTHER = "<any other>"
