"""The production store: PostgreSQL through an asyncpg pool, shared by any number of stateless replicas.

Lifecycle: `PostgresStore(config)` does no I/O; `await store.open()` creates the pool (bounded size,
connect and command timeouts from `StoreConfig`) and, when `migrate_on_start`, applies pending
migrations under the advisory lock (see `exchange.store.migrate`), else refuses a schema that is
behind; `await store.close()` drains it.
Every statement uses `$n` parameters: request data never reaches SQL as text.

Failure contract (`exchange.store.pgpool`): an outage is `StoreUnavailable` within
`connect_timeout + command_timeout` seconds, so the app answers 503 instead of hanging. Rows map to
records through `exchange.store.sql`, the one mapping both stores share.

Key-ring propagation (beyond the `Store` protocol; the app lifespan calls it):

    version = await store.keys_version()      # a cheap counter, read before loading the key ring
    ring = load_keys(await store.list_keys())
    task = asyncio.create_task(store.watch_keys(on_change, known_version=version))
    ...
    task.cancel()                               # at shutdown

`keys_version()` returns a number that a trigger on `signing_keys` bumps on every committed change,
whoever made it (this replica, another one, `exchange keys rotate`, hand-written SQL). `watch_keys()`
runs until cancelled: it LISTENs on the `exchange_keys` channel on its own connection (outside the pool)
and also re-reads the version every `poll_interval` seconds, so a lost notification or a dropped
connection delays a refresh by at most that interval (default 2 s). It awaits `on_change()` once per
observed change (bursts are coalesced), logs and survives callback errors, and reconnects on its own
when the database goes away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import asyncpg
import msgspec
import structlog

from exchange.store import migrate as migrations
from exchange.store import sql
from exchange.store.base import AuditCount, AuditFilter, KeyChange, KeyConflict, StoreUnavailable
from exchange.store.pgpool import OUTAGE_SQLSTATE_CLASSES, UNAVAILABLE, Pool, connect, describe
from schemas.config import StoreConfig
from schemas.records import AuditRecord, DenialCount, StoredKey

KEYS_CHANNEL = "exchange_keys"
_KEYS_LOCK_ID = 0x7075_7270_6F73_6B31  # "purposk1": any constant shared by all replicas

_log = structlog.get_logger("exchange.store.postgres")
# The key watch outlives outages: any of these means "reconnect after a pause".
_WATCH_FAILURES: tuple[type[BaseException], ...] = (StoreUnavailable, *UNAVAILABLE)

# One statement for a whole batch: the records as one JSON array (msgspec encodes the batch in one
# call), rows by json_to_recordset in array order (ROWS FROM ... WITH ORDINALITY makes the order
# explicit, so seq follows the batch). A single statement is its own transaction: one round trip, one
# commit, all or nothing. It replaced seventeen typed arrays through unnest: asyncpg's array encoder
# tests every element against collections.abc (two isinstance calls per value), ~28 µs of our CPU per
# record against ~14 now, PostgreSQL's CPU the same (bench/RESULTS.md). An omitted field is NULL, as
# None was; `rules` (omitted when empty) falls back to the column's '[]'.
_AUDIT_TYPES = {"time": "float8", "exp": "int8", "rules": "jsonb"}
_INSERT_AUDIT = f"""
INSERT INTO audit_records ({", ".join(sql.AUDIT_COLUMNS)})
SELECT {", ".join("COALESCE(rules, '[]')" if c == "rules" else c for c in sql.AUDIT_COLUMNS)}
FROM ROWS FROM (json_to_recordset($1::json)
                AS ({", ".join(f"{c} {_AUDIT_TYPES.get(c, 'text')}" for c in sql.AUDIT_COLUMNS)}))
     WITH ORDINALITY AS u({", ".join(sql.AUDIT_COLUMNS)}, n)
ORDER BY n
"""  # noqa: S608 - constant column lists; every value is in the one $1 parameter
_encode = msgspec.json.Encoder().encode


def _audit_json(records: Sequence[AuditRecord]) -> str:
    """The batch as the JSON array `_INSERT_AUDIT` reads; NULs replaced as `sql.without_nul` says."""
    body = _encode(records)
    # msgspec writes a NUL as \u0000, which json_to_recordset refuses to turn into text. (A value
    # spelling a backslash and "u0000" matches too: it goes the same way, and comes out unchanged.)
    if b"\\u0000" in body:
        body = _encode([sql.without_nul(r) for r in records])
    return body.decode()


class PostgresStore:
    """`exchange.store.base.Store` on PostgreSQL (asyncpg)."""

    def __init__(self, config: StoreConfig) -> None:
        self._config = config
        self._pool = Pool(config)
        self._deadline = self._pool.deadline

    # -- lifecycle -----------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the pool and, when configured, migrate. Raises StoreUnavailable if unreachable."""
        await self._pool.open()
        try:
            if self._config.migrate_on_start:
                applied = await self.migrate()
                if applied:
                    _log.info("schema_migrated", applied=applied)
            else:
                migrations.require_current(await self.migration_status(), "postgres")
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await self._pool.close()

    async def migrate(self) -> list[str]:
        """Apply pending migrations (one transaction, advisory lock); the names applied."""
        # Migrations (or waiting for another replica's) may run far longer than a request may.
        async with self._pool.connection(
            deadline=self._config.connect_timeout + migrations.MIGRATION_TIMEOUT
        ) as conn:
            return await migrations.migrate_postgres(conn)

    async def migration_status(self) -> list[migrations.MigrationState]:
        async with self._pool.connection() as conn:
            return await migrations.postgres_status(conn)

    async def ping(self) -> None:
        async with self._pool.connection() as conn:
            await conn.fetchval("SELECT 1")

    # -- keys ----------------------------------------------------------------------------------------

    async def insert_key(self, key: StoredKey) -> None:
        try:
            async with self._pool.connection() as conn:
                await conn.execute(sql.INSERT_KEY, *sql.key_row(key))
        except asyncpg.UniqueViolationError as exc:
            raise ValueError(
                f"signing key {key.kid!r} conflicts with a stored key ({exc.constraint_name})"
            ) from exc

    async def list_keys(self) -> list[StoredKey]:
        async with self._pool.connection() as conn:
            rows = await conn.fetch(sql.LIST_KEYS)
        return [sql.stored_key(r) for r in rows]

    async def change_keys(self, plan: Callable[[list[StoredKey]], Sequence[KeyChange]]) -> list[KeyChange]:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                # Every replica and CLI run changing keys queues here first, so each plans on the
                # result of the one before it: one current key, one staged rotation, whoever races.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _KEYS_LOCK_ID)
                keys = [sql.stored_key(r) for r in await conn.fetch(sql.LIST_KEYS)]
                changes = list(plan(keys))
                for change in changes:
                    statement, values = sql.key_change(change)
                    if await conn.execute(statement, *values) not in ("INSERT 0 1", "UPDATE 1"):
                        raise KeyConflict(f"signing keys changed meanwhile: {change!r} no longer applies")
                return changes
        except asyncpg.UniqueViolationError as exc:
            raise KeyConflict(f"signing keys conflict ({exc.constraint_name})") from exc

    async def keys_version(self) -> int:
        """A number that changes after every committed change to the signing keys (see module doc)."""
        async with self._pool.connection() as conn:
            return int(await conn.fetchval("SELECT version FROM key_ring_version"))

    async def watch_keys(
        self,
        on_change: Callable[[], Awaitable[None]],
        *,
        known_version: int | None = None,
        poll_interval: float = 2.0,
    ) -> None:
        """Await `on_change()` after each committed key change, until cancelled (see module doc)."""
        last = known_version
        wake = asyncio.Event()
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(self._config, "purpose-exchange-keywatch")
                async with asyncio.timeout(self._deadline):
                    await conn.add_listener(KEYS_CHANNEL, lambda *_: wake.set())
                while True:
                    # Read the version after (re)subscribing, so a change made while we were not
                    # listening is still seen; then sleep until notified or the poll interval passes.
                    version = int(await conn.fetchval("SELECT version FROM key_ring_version"))
                    if last is None:
                        last = version
                    elif version != last:
                        last = version
                        try:
                            await on_change()
                        except Exception:
                            _log.exception("key_refresh_failed", keys_version=version)
                    try:
                        async with asyncio.timeout(poll_interval):
                            await wake.wait()
                    except TimeoutError:
                        pass
                    wake.clear()
            except _WATCH_FAILURES as exc:
                _log.warning("key_watch_lost", error=describe(exc), retry_in=poll_interval)
                await asyncio.sleep(poll_interval)
            finally:
                if conn is not None:
                    conn.terminate()

    # -- audit ---------------------------------------------------------------------------------------

    async def append_audit(self, records: Sequence[AuditRecord]) -> None:
        if not records:
            return
        body = _audit_json(records)
        # One statement is one implicit transaction: the batch commits whole or not at all. The audit
        # writer sends one batch after another: on the held connection (pgpool.Pool.held).
        async with self._pool.held() as conn:
            await conn.execute(_INSERT_AUDIT, body)

    async def list_audit(
        self, where: AuditFilter | None = None, *, limit: int = 100, before: int | None = None
    ) -> list[AuditRecord]:
        query, params = sql.list_audit_query(where, limit, before)
        async with self._pool.connection() as conn:
            rows = await conn.fetch(query, *params)
        return [sql.audit_record(r) for r in rows]

    async def export_audit(self, *, after: int = 0, limit: int = 1000) -> list[AuditRecord]:
        async with self._pool.connection() as conn:
            rows = await conn.fetch(sql.EXPORT_AUDIT, after, limit)
        return [sql.audit_record(r) for r in rows]

    async def count_audit(self, where: AuditFilter | None = None) -> list[AuditCount]:
        query, params = sql.count_audit_query(where)
        async with self._pool.connection() as conn:
            rows = await conn.fetch(query, *params)
        return sql.audit_counts(rows)

    async def purge_audit(self, before: float, *, batch: int = 10_000) -> int:
        async with self._pool.connection() as conn, conn.transaction():
            records = await conn.execute(sql.PURGE_AUDIT, before, batch)
            counts = await conn.execute(sql.PURGE_DENIAL_COUNTS, int(before))
        # The command status is "DELETE <rows>".
        return int(records.split()[-1]) + int(counts.split()[-1])

    async def add_denial_counts(self, counts: Sequence[DenialCount]) -> None:
        if not counts:
            return
        async with self._pool.connection() as conn, conn.transaction():
            await conn.executemany(sql.ADD_DENIAL_COUNT, [sql.denial_count_row(c) for c in counts])

    async def list_denial_counts(self, *, since: float = 0.0, limit: int = 1000) -> list[DenialCount]:
        async with self._pool.connection() as conn:
            rows = await conn.fetch(sql.LIST_DENIAL_COUNTS, int(since), limit)
        return [sql.denial_count(r) for r in rows]

    # -- python rules --------------------------------------------------------------------------------

    async def rule_query(
        self, sql: str, params: Sequence[object], *, max_rows: int = 100
    ) -> list[Mapping[str, Any]]:
        """One read-only query for python rules (docs/RULES.md): `$n` parameters, timeout, row cap.

        The query runs in a READ ONLY transaction (any write, NOTIFY, nextval or row lock fails) with a
        server-side statement_timeout as well as the client-side one, and only `max_rows` rows are ever
        fetched from a cursor. An outage is StoreUnavailable; a query the server refuses (syntax, unknown
        table, attempted write) is the rule's own bug and a ValueError naming the SQLSTATE.
        """
        timeout_ms = max(1, int(self._config.command_timeout * 1000))
        try:
            async with self._pool.connection() as conn, conn.transaction(readonly=True):
                # SET cannot take $n parameters; the value is our own integer, never input.
                await conn.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
                cursor = await conn.cursor(sql, *params)
                rows = await cursor.fetch(max_rows)
        except StoreUnavailable as exc:
            cause = exc.__cause__
            if (
                isinstance(cause, asyncpg.PostgresError)
                and (cause.sqlstate or "")[:2] not in OUTAGE_SQLSTATE_CLASSES
            ):
                raise ValueError(f"rule query refused by postgresql (SQLSTATE {cause.sqlstate})") from cause
            raise
        return [dict(row.items()) for row in rows]

    # -- single use, rate limits ---------------------------------------------------------------------

    async def consume_jti(self, issuer: str, jti: str, expires_at: float) -> bool:
        async with self._pool.connection() as conn:
            inserted = await conn.fetchval(sql.CONSUME_JTI, issuer, jti, expires_at)
        return inserted is not None

    async def increment_counter(self, key: str, window_start: int, expires_at: float) -> int:
        async with self._pool.connection() as conn:
            count = await conn.fetchval(sql.INCREMENT_COUNTER, key, window_start, expires_at)
        return int(count)

    async def purge_expired(self, now: float) -> int:
        async with self._pool.connection() as conn, conn.transaction():
            replays = await conn.execute(sql.PURGE_REPLAYS, now)
            counters = await conn.execute(sql.PURGE_COUNTERS, now)
        # The command status is "DELETE <rows>".
        return int(replays.split()[-1]) + int(counters.split()[-1])
