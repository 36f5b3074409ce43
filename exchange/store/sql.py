"""The SQL both stores speak: the tables' columns, the one mapping between records and rows, and the
statements whose text is the same on SQLite and PostgreSQL.

Statements are written once with PostgreSQL's `$n` parameters; `for_sqlite` turns them into SQLite's
numbered `?n` (same positions, same values), so a column or a WHERE clause cannot drift between the
two backends. Only what a dialect really does differently (PostgreSQL's batch insert from one JSON array,
key-change notification, read-only rule transactions) lives in the backend modules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec

from exchange.store.base import AddKey, AuditCount, AuditFilter, KeyChange, MoveKey
from schemas.records import AuditRecord, DenialCount, RuleOutcome, StoredKey

AUDIT_COLUMNS = (
    "time",
    "request_id",
    "decision",
    "client_id",
    "issuer",
    "sub",
    "purpose",
    "audience",
    "error",
    "denial",
    "reason",
    "jti",
    "exp",
    "actor",
    "rules",
    "trace_id",
    "txn",
)
KEY_COLUMNS = (
    "kid",
    "alg",
    "state",
    "created_at",
    "activated_at",
    "deactivated_at",
    "retired_at",
    "revoked",
    "kek_id",
    "public_jwk",
    "private_jwk",
)

_rules_encoder = msgspec.json.Encoder()
_rules_decoder = msgspec.json.Decoder(list[RuleOutcome])
_DOLLAR_PARAM = re.compile(r"\$(\d+)")


def for_sqlite(sql: str) -> str:
    """`$1, $2` → `?1, ?2`: SQLite's numbered parameters bind the same positional values."""
    return _DOLLAR_PARAM.sub(r"?\1", sql)


def _placeholders(count: int) -> str:
    return ", ".join(f"${n}" for n in range(1, count + 1))


# Statements built from the constant column lists above, once; values always go as parameters.
INSERT_AUDIT = (
    f"INSERT INTO audit_records ({', '.join(AUDIT_COLUMNS)}) VALUES ({_placeholders(len(AUDIT_COLUMNS))})"  # noqa: S608
)
# Read back with the trail's sequence number first.
SELECT_AUDIT = f"SELECT seq, {', '.join(AUDIT_COLUMNS)} FROM audit_records"  # noqa: S608
# The filterable columns, by AuditFilter field: the only names a WHERE clause is ever built from.
_FILTER_COLUMNS = {
    "sub": "sub",
    "client_id": "client_id",
    "purpose": "purpose",
    "decision": "decision",
    "denial": "denial",
    "request_id": "request_id",
    "jti": "jti",
    "txn": "txn",
}


def _where(where: AuditFilter | None, params: list[Any]) -> list[str]:
    """Conditions for `where` (each value appended to `params` as the next `$n`)."""
    if where is None:
        return []
    clauses = []
    for field, column in _FILTER_COLUMNS.items():
        value = getattr(where, field)
        if value is not None:
            params.append(value)
            clauses.append(f"{column} = ${len(params)}")
    if where.since is not None:
        params.append(where.since)
        clauses.append(f"time >= ${len(params)}")
    if where.until is not None:
        params.append(where.until)
        clauses.append(f"time < ${len(params)}")
    return clauses


def list_audit_query(where: AuditFilter | None, limit: int, before: int | None) -> tuple[str, list[Any]]:
    """Newest first by seq, the trail's one order; `before` is the paging cursor (a seq)."""
    params: list[Any] = []
    clauses = _where(where, params)
    if before is not None:
        params.append(before)
        clauses.append(f"seq < ${len(params)}")
    params.append(limit)
    condition = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    return f"{SELECT_AUDIT}{condition} ORDER BY seq DESC LIMIT ${len(params)}", params


# The follower's cursor: everything committed after `after`, in commit order.
EXPORT_AUDIT = SELECT_AUDIT + " WHERE seq > $1 ORDER BY seq LIMIT $2"


def count_audit_query(where: AuditFilter | None) -> tuple[str, list[Any]]:
    params: list[Any] = []
    clauses = _where(where, params)
    condition = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    grouped = "decision, error, denial"
    return f"SELECT {grouped}, count(*) FROM audit_records{condition} GROUP BY {grouped}", params  # noqa: S608


def audit_counts(rows: Iterable[Iterable[Any]]) -> list[AuditCount]:
    """Most frequent first; ties in a fixed order (the backends sort NULLs differently)."""
    counts = [AuditCount(decision, error, denial, int(n)) for decision, error, denial, n in rows]
    return sorted(counts, key=lambda c: (-c.count, c.decision, c.error or "", c.denial or ""))


INSERT_KEY = f"INSERT INTO signing_keys ({', '.join(KEY_COLUMNS)}) VALUES ({_placeholders(len(KEY_COLUMNS))})"  # noqa: S608
LIST_KEYS = f"SELECT {', '.join(KEY_COLUMNS)} FROM signing_keys ORDER BY created_at DESC, kid"  # noqa: S608
# Every lifecycle move is guarded by the state it leaves, so a move planned on a stale view changes no
# row (the backends then roll the whole change back). Retiring destroys the private half.
MOVE_KEY = {
    "current": "UPDATE signing_keys SET state = 'current', activated_at = $2 WHERE kid = $1 AND state = $3",
    "previous": (
        "UPDATE signing_keys SET state = 'previous', deactivated_at = $2 WHERE kid = $1 AND state = $3"
    ),
    "retired": (
        "UPDATE signing_keys SET state = 'retired', retired_at = CAST($2 AS DOUBLE PRECISION),"
        " private_jwk = NULL, revoked = $4, deactivated_at = COALESCE(deactivated_at,"
        " CASE WHEN state = 'next' THEN NULL ELSE CAST($2 AS DOUBLE PRECISION) END)"
        " WHERE kid = $1 AND state = $3"
    ),
}
REWRAP_KEY = "UPDATE signing_keys SET private_jwk = $2, kek_id = $3 WHERE kid = $1 AND private_jwk = $4"


def key_change(change: KeyChange) -> tuple[str, tuple[Any, ...]]:
    """The one statement (and its values) that applies a planned change; it must touch one row."""
    if isinstance(change, AddKey):
        return INSERT_KEY, key_row(change.key)
    if isinstance(change, MoveKey):
        if change.to_state == "retired":
            return MOVE_KEY["retired"], (change.kid, change.at, change.from_state, change.revoked)
        return MOVE_KEY[change.to_state], (change.kid, change.at, change.from_state)
    return REWRAP_KEY, (change.kid, change.private_jwk, change.kek_id, change.was)


# RETURNING yields a row only when the insert happened: one answer to "first time?" on both backends.
CONSUME_JTI = (
    "INSERT INTO replay_records (issuer, jti, expires_at) VALUES ($1, $2, $3)"
    " ON CONFLICT (issuer, jti) DO NOTHING RETURNING 1"
)
INCREMENT_COUNTER = (
    "INSERT INTO rate_counters (key, window_start, count, expires_at) VALUES ($1, $2, 1, $3)"
    " ON CONFLICT (key, window_start) DO UPDATE SET count = rate_counters.count + 1 RETURNING count"
)
PURGE_REPLAYS = "DELETE FROM replay_records WHERE expires_at < $1"
PURGE_COUNTERS = "DELETE FROM rate_counters WHERE expires_at < $1"

# Retention: at most $2 records older than $1 per statement (through the time index), so a first purge
# of a large trail is many short transactions, not one long lock. The database refuses fresh ones.
PURGE_AUDIT = (
    "DELETE FROM audit_records WHERE seq IN (SELECT seq FROM audit_records WHERE time < $1 LIMIT $2)"
)
PURGE_DENIAL_COUNTS = "DELETE FROM unauthenticated_denials WHERE window_start < $1"

DENIAL_COUNT_COLUMNS = ("window_start", "window_seconds", "reason", "error", "client_id", "source", "count")
# Every replica adds its counts of a window to the same row.
ADD_DENIAL_COUNT = (
    f"INSERT INTO unauthenticated_denials ({', '.join(DENIAL_COUNT_COLUMNS)})"  # noqa: S608
    f" VALUES ({_placeholders(len(DENIAL_COUNT_COLUMNS))})"
    " ON CONFLICT (window_start, reason, error, client_id, source)"
    " DO UPDATE SET count = unauthenticated_denials.count + excluded.count"
)
LIST_DENIAL_COUNTS = (
    f"SELECT {', '.join(DENIAL_COUNT_COLUMNS)} FROM unauthenticated_denials"  # noqa: S608
    " WHERE window_start >= $1 ORDER BY window_start DESC, count DESC, reason, client_id, source LIMIT $2"
)


def denial_count_row(c: DenialCount) -> tuple[Any, ...]:
    """One count as the values of DENIAL_COUNT_COLUMNS ('' for a key part not given)."""
    return (
        c.window_start,
        c.window_seconds,
        _text(c.reason),
        _text(c.error),
        _text(c.client_id) or "",
        _text(c.source) or "",
        c.count,
    )


def denial_count(row: Iterable[Any]) -> DenialCount:
    window_start, window_seconds, reason, error, client_id, source, count = row
    return DenialCount(
        window_start=int(window_start),
        window_seconds=int(window_seconds),
        reason=reason,
        error=error,
        client_id=client_id or None,
        source=source or None,
        count=int(count),
    )


def _text(value: str | None) -> str | None:
    """Text columns hold no NUL (PostgreSQL text cannot): a denial caused by hostile input is still
    audited, with U+FFFD where the NUL was."""
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


def without_nul(r: AuditRecord) -> AuditRecord:
    """The record with `_text`'s replacement applied to every text it holds, its rules' included."""
    changed: dict[str, Any] = {
        name: _text(value)
        for name in AuditRecord.__struct_fields__
        if isinstance(value := getattr(r, name), str) and "\x00" in value
    }
    if any("\x00" in o.rule or "\x00" in (o.code or "") for o in r.rules):
        changed["rules"] = [
            RuleOutcome(rule=_text(o.rule) or "", outcome=o.outcome, code=_text(o.code)) for o in r.rules
        ]
    return msgspec.structs.replace(r, **changed) if changed else r


def audit_row(r: AuditRecord) -> tuple[Any, ...]:
    """One record as the values of AUDIT_COLUMNS, in that order."""
    return (
        r.time,
        _text(r.request_id),
        r.decision,
        _text(r.client_id),
        _text(r.issuer),
        _text(r.sub),
        _text(r.purpose),
        _text(r.audience),
        _text(r.error),
        _text(r.denial),
        _text(r.reason),
        _text(r.jti),
        r.exp,
        _text(r.actor),
        _text(_rules_encoder.encode(r.rules).decode()),
        _text(r.trace_id),
        _text(r.txn),
    )


def audit_record(row: Iterable[Any]) -> AuditRecord:
    """A row selected by SELECT_AUDIT (an sqlite3 tuple or an asyncpg Record) back into a record."""
    (seq, time, request_id, decision, client_id, issuer, sub, purpose, audience, error, denial, reason,
     jti, exp, actor, rules, trace_id, txn) = row  # fmt: skip
    return AuditRecord(
        seq=seq,
        time=time,
        request_id=request_id,
        decision=decision,
        client_id=client_id,
        issuer=issuer,
        sub=sub,
        purpose=purpose,
        audience=audience,
        error=error,
        denial=denial,
        reason=reason,
        jti=jti,
        exp=exp,
        actor=actor,
        rules=_rules_decoder.decode(rules),
        trace_id=trace_id,
        txn=txn,
    )


def key_row(k: StoredKey) -> tuple[Any, ...]:
    """One key as the values of KEY_COLUMNS, in that order."""
    return (
        k.kid,
        k.alg,
        k.state,
        k.created_at,
        k.activated_at,
        k.deactivated_at,
        k.retired_at,
        k.revoked,
        k.kek_id,
        k.public_jwk,
        k.private_jwk,
    )


def stored_key(row: Iterable[Any]) -> StoredKey:
    """A row selected as KEY_COLUMNS back into a key (the ciphertext as bytes on both backends)."""
    kid, alg, state, created, activated, deactivated, retired, revoked, kek_id, public, private = row
    return StoredKey(
        kid=kid,
        alg=alg,
        state=state,
        created_at=created,
        activated_at=activated,
        deactivated_at=deactivated,
        retired_at=retired,
        revoked=bool(revoked),
        kek_id=kek_id,
        public_jwk=public,
        private_jwk=None if private is None else bytes(private),
    )
