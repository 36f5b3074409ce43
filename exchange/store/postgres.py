"""The production store: PostgreSQL through an asyncpg pool, shared by any number of stateless replicas.

Lifecycle: `PostgresStore(config)` does no I/O; `await store.open()` creates the pool (bounded size,
connect and command timeouts from `StoreConfig`) and, when `migrate_on_start`, applies pending
migrations under the advisory lock (see `exchange.store.migrate`); `await store.close()` drains it.
Every statement uses `$n` parameters: request data never reaches SQL as text.

Failure contract: anything that means "the database is not answering properly now" (connection refused
or lost, pool or statement timeout, server shutting down, schema missing) is raised as
`StoreUnavailable`, within `connect_timeout + command_timeout` seconds, so the app answers 503 instead
of hanging. Once the database returns the pool reconnects by itself on the next call.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec
import structlog

from exchange.store import migrate as migrations
from exchange.store.base import StoreUnavailable
from schemas.config import StoreConfig
from schemas.records import AuditRecord, RuleOutcome, StoredKey

if TYPE_CHECKING:
    from exchange.store.migrate import AnyConnection as PooledConnection

KEYS_CHANNEL = "exchange_keys"
# SQLSTATE classes that mean the server cannot serve us now (connection exception, insufficient
# resources, operator intervention such as shutdown or cancel, system error), as opposed to a query
# the server understood and refused.
_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "58"})
_ACTIVATE_LOCK_ID = 0x7075_7270_6F73_6B31  # "purposk1": any constant shared by all replicas

_log = structlog.get_logger("exchange.store.postgres")
_rules_encoder = msgspec.json.Encoder()
_rules_decoder = msgspec.json.Decoder(list[RuleOutcome])

_AUDIT_COLUMNS = (
    "time, request_id, decision, client_id, issuer, sub, purpose, audience, error, denial, reason, "
    "jti, exp, actor, rules"
)
# One statement for a whole batch: fifteen typed arrays, unnested into rows in array order (WITH
# ORDINALITY makes the order explicit, so ids follow the batch). A single statement is its own
# transaction: one round trip, one commit, all or nothing. bench/audit_bench.py measured it against
# executemany in one transaction (which asyncpg pipelines): within ~10% of each other at every batch
# size from 1 to 500, so the simpler, driver-independent single statement stays.
_INSERT_AUDIT = f"""
INSERT INTO audit_records ({_AUDIT_COLUMNS})
SELECT t, r, d, c, i, s, p, a, e, dn, rs, j, x, ac, ru::jsonb
FROM unnest($1::float8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::int8[], $14::text[],
            $15::text[])
     WITH ORDINALITY AS u(t, r, d, c, i, s, p, a, e, dn, rs, j, x, ac, ru, n)
ORDER BY n
"""  # noqa: S608 - a constant column list; every value is a $n parameter

# The failures that mean "the database is unavailable", as opposed to a bug in the caller.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, DNS (socket.gaierror is an OSError)
    TimeoutError,  # connect, acquire or statement took longer than configured
    asyncpg.InterfaceError,  # connection closed underneath us, pool closing
    # A connection the server terminated while it sat idle in the pool (admin shutdown, failover) can
    # surface as a protocol-state error on its next use rather than as a clean disconnect.
    asyncpg.InternalClientError,
    asyncpg.PostgresError,  # includes admin shutdown, too many connections, query canceled, missing table
)


class PostgresStore:
    """`exchange.store.base.Store` on PostgreSQL (asyncpg)."""

    def __init__(self, config: StoreConfig) -> None:
        self._config = config
        self._dsn = config.url
        self._pool: asyncpg.Pool | None = None
        # Hard bound on any one store call: getting a connection plus running its statements.
        self._deadline = config.connect_timeout + config.command_timeout

    # -- lifecycle -----------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the pool and, when configured, migrate. Raises StoreUnavailable if unreachable."""
        cfg = self._config
        try:
            async with asyncio.timeout(self._deadline):
                self._pool = await asyncpg.create_pool(
                    dsn=self._dsn,
                    min_size=min(cfg.pool_min_size, cfg.pool_max_size),
                    max_size=cfg.pool_max_size,
                    timeout=cfg.connect_timeout,
                    command_timeout=cfg.command_timeout,
                    # Idle connections are recycled, so a failed-over primary is picked up soon.
                    max_inactive_connection_lifetime=60.0,
                    server_settings={
                        "application_name": "purpose-exchange",
                        # A connection stuck mid-transaction must not hold locks for long.
                        "idle_in_transaction_session_timeout": str(int(cfg.command_timeout * 2000)),
                    },
                )
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"postgresql: cannot connect: {_describe(exc)}") from exc
        try:
            if cfg.migrate_on_start:
                applied = await self.migrate()
                if applied:
                    _log.info("schema_migrated", applied=applied)
            else:
                await self._check_schema()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self._deadline)
            except _UNAVAILABLE:
                # Graceful close did not finish (database gone): drop the sockets rather than hang.
                pool.terminate()

    async def migrate(self) -> list[str]:
        """Apply pending migrations (one transaction, advisory lock); the names applied."""
        # Migrations (or waiting for another replica's) may run far longer than a request may.
        async with self._connection(
            deadline=self._config.connect_timeout + migrations.MIGRATION_TIMEOUT
        ) as conn:
            return await migrations.migrate(conn)

    async def migration_status(self) -> list[migrations.MigrationState]:
        async with self._connection() as conn:
            return await migrations.status(conn)

    async def _check_schema(self) -> None:
        states = await self.migration_status()
        behind = migrations.pending(states)
        if behind:
            raise StoreUnavailable(
                f"postgresql: schema is behind ({len(behind)} pending migration(s));"
                " run `exchange db migrate`"
            )

    @asynccontextmanager
    async def _connection(self, *, deadline: float | None = None) -> AsyncIterator[PooledConnection]:
        """A pooled connection for one store call, with every unavailability mapped to StoreUnavailable."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("postgresql: store is not open")
        try:
            async with asyncio.timeout(deadline or self._deadline):
                async with pool.acquire(timeout=self._config.connect_timeout) as conn:
                    yield conn
        except StoreUnavailable:
            raise
        except (ValueError, asyncpg.UniqueViolationError):
            # A caller's mistake, not an outage: asyncpg raises a ValueError for an argument it cannot
            # encode (e.g. an int beyond 64 bits); insert_key turns a duplicate kid into one.
            raise
        except asyncpg.DataError as exc:  # the server's SQLSTATE class 22: a value it cannot store
            raise ValueError(f"postgresql refused a value: {_describe(exc)}") from exc
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"postgresql: {_describe(exc)}") from exc

    async def ping(self) -> None:
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")

    # -- keys ----------------------------------------------------------------------------------------

    async def insert_key(self, key: StoredKey) -> None:
        try:
            async with self._connection() as conn:
                await conn.execute(
                    "INSERT INTO signing_keys"
                    " (kid, alg, state, created_at, retired_at, public_jwk, private_jwk)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    key.kid,
                    key.alg,
                    key.state,
                    key.created_at,
                    key.retired_at,
                    key.public_jwk,
                    key.private_jwk,
                )
        except asyncpg.UniqueViolationError as exc:
            raise ValueError(
                f"signing key {key.kid!r} conflicts with a stored key ({exc.constraint_name})"
            ) from exc

    async def list_keys(self) -> list[StoredKey]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT kid, alg, state, created_at, retired_at, public_jwk, private_jwk"
                " FROM signing_keys ORDER BY created_at DESC, kid"
            )
        return [
            StoredKey(
                kid=r["kid"],
                alg=r["alg"],
                state=r["state"],
                created_at=r["created_at"],
                retired_at=r["retired_at"],
                public_jwk=r["public_jwk"],
                private_jwk=bytes(r["private_jwk"]),
            )
            for r in rows
        ]

    async def activate_key(self, kid: str, now: float) -> None:
        async with self._connection() as conn, conn.transaction():
            # Two replicas activating different keys at once must serialise: without this lock the later
            # one's UPDATE works from a snapshot missing the other's new active key and trips the
            # one-active index. With it, the later activation simply wins.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _ACTIVATE_LOCK_ID)
            if await conn.fetchval("SELECT 1 FROM signing_keys WHERE kid = $1 FOR UPDATE", kid) is None:
                raise KeyError(kid)
            await conn.execute(
                "UPDATE signing_keys SET state = 'retiring', retired_at = $1"
                " WHERE state = 'active' AND kid <> $2",
                now,
                kid,
            )
            await conn.execute(
                "UPDATE signing_keys SET state = 'active', retired_at = NULL WHERE kid = $1", kid
            )

    async def retire_keys(self, before: float) -> list[str]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "UPDATE signing_keys SET state = 'retired'"
                " WHERE state = 'retiring' AND retired_at < $1 RETURNING kid",
                before,
            )
        return sorted(r["kid"] for r in rows)

    async def keys_version(self) -> int:
        """A number that changes after every committed change to the signing keys (see module doc)."""
        async with self._connection() as conn:
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
                async with asyncio.timeout(self._deadline):
                    conn = await asyncpg.connect(
                        dsn=self._dsn,
                        timeout=self._config.connect_timeout,
                        command_timeout=self._config.command_timeout,
                        server_settings={"application_name": "purpose-exchange-keywatch"},
                    )
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
            except _UNAVAILABLE as exc:
                _log.warning("key_watch_lost", error=_describe(exc), retry_in=poll_interval)
                await asyncio.sleep(poll_interval)
            finally:
                if conn is not None:
                    conn.terminate()

    # -- audit ---------------------------------------------------------------------------------------

    async def append_audit(self, records: Sequence[AuditRecord]) -> None:
        if not records:
            return
        columns: list[list[Any]] = [[] for _ in range(15)]
        for r in records:
            row = (
                r.time,
                r.request_id,
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
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        # One statement is one implicit transaction: the batch commits whole or not at all.
        async with self._connection() as conn:
            await conn.execute(_INSERT_AUDIT, *columns)

    async def list_audit(self, *, limit: int = 100, before: float | None = None) -> list[AuditRecord]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_AUDIT_COLUMNS} FROM audit_records"  # noqa: S608 - constant columns
                " WHERE $1::float8 IS NULL OR time < $1 ORDER BY time DESC, id DESC LIMIT $2",
                before,
                limit,
            )
        return [
            AuditRecord(
                time=r["time"],
                request_id=r["request_id"],
                decision=r["decision"],
                client_id=r["client_id"],
                issuer=r["issuer"],
                sub=r["sub"],
                purpose=r["purpose"],
                audience=r["audience"],
                error=r["error"],
                denial=r["denial"],
                reason=r["reason"],
                jti=r["jti"],
                exp=r["exp"],
                actor=r["actor"],
                rules=_rules_decoder.decode(r["rules"]),
            )
            for r in rows
        ]

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
            async with self._connection() as conn, conn.transaction(readonly=True):
                # SET cannot take $n parameters; the value is our own integer, never input.
                await conn.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
                cursor = await conn.cursor(sql, *params)
                rows = await cursor.fetch(max_rows)
        except StoreUnavailable as exc:
            cause = exc.__cause__
            if (
                isinstance(cause, asyncpg.PostgresError)
                and (cause.sqlstate or "")[:2] not in _OUTAGE_SQLSTATE_CLASSES
            ):
                raise ValueError(f"rule query refused by postgresql (SQLSTATE {cause.sqlstate})") from cause
            raise
        return _rule_rows(rows)

    # -- single use, rate limits ---------------------------------------------------------------------

    async def consume_jti(self, issuer: str, jti: str, expires_at: float) -> bool:
        async with self._connection() as conn:
            inserted = await conn.fetchval(
                "INSERT INTO replay_records (issuer, jti, expires_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (issuer, jti) DO NOTHING RETURNING true",
                issuer,
                jti,
                expires_at,
            )
        return inserted is True

    async def increment_counter(self, key: str, window_start: int, expires_at: float) -> int:
        async with self._connection() as conn:
            count = await conn.fetchval(
                "INSERT INTO rate_counters (key, window_start, count, expires_at) VALUES ($1, $2, 1, $3)"
                " ON CONFLICT (key, window_start)"
                " DO UPDATE SET count = rate_counters.count + 1 RETURNING count",
                key,
                window_start,
                expires_at,
            )
        return int(count)

    async def purge_expired(self, now: float) -> int:
        async with self._connection() as conn, conn.transaction():
            replays = await conn.fetchval(
                "WITH gone AS (DELETE FROM replay_records WHERE expires_at < $1 RETURNING 1)"
                " SELECT count(*) FROM gone",
                now,
            )
            counters = await conn.fetchval(
                "WITH gone AS (DELETE FROM rate_counters WHERE expires_at < $1 RETURNING 1)"
                " SELECT count(*) FROM gone",
                now,
            )
        return int(replays) + int(counters)


def _rule_rows(rows: list[asyncpg.Record]) -> list[Mapping[str, Any]]:
    return [dict(row.items()) for row in rows]


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL; a denial caused by hostile input must still be audited."""
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


def _describe(exc: BaseException) -> str:
    """One line naming the failure, without the DSN (which may carry a password)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
