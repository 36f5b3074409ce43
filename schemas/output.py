"""What `exchange ... --json` prints: one Struct per kind of thing, whichever command prints it.

The convention (exchange/cli/output.py, docs/OPERATIONS.md "CLI conventions"): lists are JSON Lines,
single results one object; every field is always present (`null` when empty); names are the stored
names; times are UTC strings ending in `Z`. These types never omit a field, unlike the stored records.
"""

from __future__ import annotations

from typing import Literal

from schemas.base import Base

# An RFC 3339 UTC time with microseconds and Z, e.g. "2026-11-29T10:16:50.123456Z".
UtcTime = str


class AuditRule(Base, frozen=True):
    """One rule's recorded outcome (`rule` is its label, e.g. "claim[amr]")."""

    rule: str
    outcome: str
    code: str | None


class AuditLine(Base, frozen=True):
    """One audit record: `exchange audit list --json`, `exchange audit export`."""

    seq: int
    time: UtcTime
    request_id: str
    decision: str
    client_id: str | None
    issuer: str | None
    sub: str | None
    purpose: str | None
    audience: str | None
    error: str | None
    denial: str | None
    reason: str | None
    jti: str | None
    exp: UtcTime | None
    actor: str | None
    txn: str | None
    rules: list[AuditRule]
    trace_id: str | None = None  # the request's W3C trace id, when tracing was on


class AuditCountLine(Base, frozen=True):
    """`exchange audit stats --json`: how many records share one outcome."""

    decision: str
    error: str | None
    denial: str | None
    count: int


class DenialCountLine(Base, frozen=True):
    """`exchange audit unauthenticated`: refusals before client authentication in one window."""

    window_start: UtcTime
    window_seconds: int
    count: int
    error: str
    reason: str
    client_id: str | None
    source: str | None


class KeyLine(Base, frozen=True):
    """`exchange keys list --json`. The times are the stored ones, and for what has not happened yet the
    computed ones: a next key's `activated_at` is when it will sign, a previous key's `retired_at` when
    it will be unpublished and destroyed."""

    kid: str
    alg: str
    state: str
    created_at: UtcTime
    activated_at: UtcTime | None
    deactivated_at: UtcTime | None
    retired_at: UtcTime | None
    revoked: bool
    kek_id: str | None


class RotatedKey(Base, frozen=True):
    """`exchange keys rotate --json`, `exchange keys import --json`: the key that was staged (or made
    current) and when it signs; `changed` is false when a staged key already existed."""

    kid: str
    state: str
    activated_at: UtcTime | None
    changed: bool


class RevokedKey(Base, frozen=True):
    """`exchange keys revoke --json`: the revoked key and the one that signs instead (null: it was
    not current)."""

    kid: str
    replaced_by: str | None
    changed: bool


class RewrappedKeys(Base, frozen=True):
    """`exchange keys rewrap --json`: how many keys were resealed under the KEK `kek_id`."""

    kek_id: str
    rewrapped: int


class MigrationLine(Base, frozen=True):
    """`exchange db status --json`."""

    version: int
    name: str
    applied: bool
    applied_at: UtcTime | None
    checksum_ok: bool


class MigrateResult(Base, frozen=True):
    """`exchange db migrate --json`."""

    backend: str
    applied: list[str]


class ConfigSummary(Base, frozen=True):
    """`exchange config check --json` (problems go to stderr, exit 1, as without --json)."""

    file: str
    purposes: int
    clients: int
    trusted_issuers: int


class ReloadOutcome(Base, frozen=True):
    """`exchange config reload --json`: one line per worker of each server signalled."""

    server: int
    worker: int
    result: str  # "ok", "no answer", or the first problem that kept the running configuration
    generation: int
    restart_needed: list[str]


class SecretHash(Base, frozen=True):
    """`exchange clients hash-secret --json`."""

    secret_hash: str


class RuleLine(Base, frozen=True):
    """One rule in `exchange rules explain --json`: what it demands and what it answered."""

    rule: str
    requirement: str
    outcome: Literal["allow", "deny", "error", "not evaluated"]
    code: str | None


class Explanation(Base, frozen=True):
    """`exchange rules explain --json`: a token or claims tried against a purpose's rules.

    `source`: "subject_token" (verified as the exchange would), "claims" (a dry run, nothing verified)
    or "audit" (a recorded decision, given in `recorded`; each rule's outcome is the one recorded then,
    its requirement what the rule demands now).
    `refused`: why the subject token or the client was refused before any rule ran (the audit reason,
    e.g. "subject_token:expired"), else null; then every rule is "not evaluated".
    `decision`: "allow" or "deny" for the rules; for "audit", the recorded "granted" or "denied".
    """

    source: Literal["subject_token", "claims", "audit"]
    purpose: str
    client_id: str | None
    issuer: str | None
    sub: str | None
    refused: str | None
    rules: list[RuleLine]
    decision: str
    denial: str | None
    recorded: AuditLine | None
