"""The embedded store: one SQLite file, no server to run.

sqlite3 is synchronous, so every call runs on one dedicated thread; that thread owns the connection,
which also serialises writers the way SQLite wants. Durability: WAL with synchronous=FULL, so a
committed audit batch survives a crash; the auditor's group commit keeps that affordable.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

from exchange.store import migrate as migrations
from exchange.store import sql
from exchange.store.base import AuditCount, AuditFilter, KeyChange, KeyConflict, StoreUnavailable
from schemas.config import StoreConfig
from schemas.records import AuditRecord, DenialCount, StoredKey

T = TypeVar("T")
log = structlog.get_logger("exchange.store")

# The shared statements in SQLite's parameter style, converted once.
_INSERT_AUDIT = sql.for_sqlite(sql.INSERT_AUDIT)
_EXPORT_AUDIT = sql.for_sqlite(sql.EXPORT_AUDIT)
_INSERT_KEY = sql.for_sqlite(sql.INSERT_KEY)
_LIST_KEYS = sql.for_sqlite(sql.LIST_KEYS)
_CONSUME_JTI = sql.for_sqlite(sql.CONSUME_JTI)
_INCREMENT_COUNTER = sql.for_sqlite(sql.INCREMENT_COUNTER)
_PURGE_REPLAYS = sql.for_sqlite(sql.PURGE_REPLAYS)
_PURGE_COUNTERS = sql.for_sqlite(sql.PURGE_COUNTERS)
_PURGE_AUDIT = sql.for_sqlite(sql.PURGE_AUDIT)
_PURGE_DENIAL_COUNTS = sql.for_sqlite(sql.PURGE_DENIAL_COUNTS)
_ADD_DENIAL_COUNT = sql.for_sqlite(sql.ADD_DENIAL_COUNT)
_LIST_DENIAL_COUNTS = sql.for_sqlite(sql.LIST_DENIAL_COUNTS)


def sqlite_path(url: str) -> str:
    """`sqlite:///relative.db`, `sqlite:////absolute.db` or `sqlite:///:memory:` to a sqlite3 path."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not an sqlite URL: {url!r}")
    return url[len("sqlite:///") :]


def create_private(path: str) -> None:
    """Create the database file 0600 (its folder 0700) unless it exists, whatever the umask.

    SQLite would create it 0644 minus the umask; its -wal and -shm files take the database file's
    mode, so making this one private makes all three private.
    """
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def connect(path: str, timeout: float) -> sqlite3.Connection:
    """The read-write connection: autocommit (transactions are explicit), WAL, synchronous=FULL."""
    if path != ":memory:":
        create_private(path)
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    _enter_wal(conn, timeout)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _enter_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """`PRAGMA journal_mode=WAL`, retried: on a new file that several connections open at once, the
    switch answers "database is locked" at once instead of waiting on the busy timeout (seen with
    five concurrent migrators on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                conn.close()
                raise
        time.sleep(0.005)


def connect_readonly(path: str, timeout: float) -> sqlite3.Connection:
    """A connection that cannot write (python rules' queries, `exchange db status`)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    return conn


class SQLiteStore:
    """`exchange.store.base.Store` on one SQLite file."""

    def __init__(self, config: StoreConfig) -> None:
        self._path = sqlite_path(config.url)
        self._timeout = config.command_timeout
        self._migrate = config.migrate_on_start
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._readonly: sqlite3.Connection | None = None

    # -- plumbing -------------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, limit: float | None = None) -> T:
        """Run `fn` on the store's thread, bounded by the command timeout (or `limit` seconds).

        `fn` must return plain values, never a cursor: a cursor finalised on another thread while this
        one uses the connection is an SQLite API misuse.
        """
        if self._executor is None or self._conn is None:
            raise StoreUnavailable("store is not open")
        conn = self._conn
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._executor, fn, conn), limit or self._timeout
            )
        except sqlite3.IntegrityError as exc:  # a constraint, not an outage (as in PostgreSQL)
            raise ValueError(f"sqlite: {exc}") from exc
        except (sqlite3.OperationalError, sqlite3.DatabaseError, TimeoutError) as exc:
            raise StoreUnavailable(f"sqlite: {exc.__class__.__name__}") from exc

    async def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one BEGIN IMMEDIATE transaction (the write lock first): all of it or none."""

        def go(c: sqlite3.Connection) -> T:
            c.execute("BEGIN IMMEDIATE")
            try:
                result = fn(c)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return result

        return await self._run(go)

    async def open(self) -> None:
        """Open (creating the file), then migrate when configured, else refuse a schema that is behind."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, connect, self._path, self._timeout)
            if self._migrate:
                applied = await self.migrate()
                if applied:
                    log.info("schema_migrated", applied=applied)
            else:
                migrations.require_current(await self._run(migrations.sqlite_status), "sqlite")
            if self._path != ":memory:":
                self._readonly = await loop.run_in_executor(
                    self._executor, connect_readonly, self._path, self._timeout
                )
        except sqlite3.Error as exc:
            await self.close()
            raise StoreUnavailable(f"sqlite: cannot open {self._path}: {exc}") from exc
        except BaseException:
            await self.close()
            raise

    async def migrate(self) -> list[str]:
        """Apply pending migrations (one BEGIN IMMEDIATE transaction); the names applied."""
        # Waiting for another process's migration may take far longer than a request may.
        return await self._run(migrations.migrate_sqlite, limit=migrations.MIGRATION_TIMEOUT)

    async def close(self) -> None:
        if self._executor is not None:
            for conn in (self._readonly, self._conn):
                if conn is not None:
                    await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
            self._executor.shutdown(wait=True)
        self._executor, self._conn, self._readonly = None, None, None

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    # -- keys -----------------------------------------------------------------------------------------

    async def insert_key(self, key: StoredKey) -> None:
        row = sql.key_row(key)

        def go(c: sqlite3.Connection) -> None:
            c.execute(_INSERT_KEY, row)

        await self._run(go)

    async def list_keys(self) -> list[StoredKey]:
        rows = await self._run(lambda c: c.execute(_LIST_KEYS).fetchall())
        return [sql.stored_key(r) for r in rows]

    async def change_keys(
        self, plan: Callable[[list[StoredKey]], Sequence[KeyChange]]
    ) -> list[KeyChange]:
        def go(c: sqlite3.Connection) -> list[KeyChange]:
            keys = [sql.stored_key(r) for r in c.execute(_LIST_KEYS).fetchall()]
            changes = list(plan(keys))
            for change in changes:
                statement, values = sql.key_change(change)
                try:
                    cursor = c.execute(sql.for_sqlite(statement), values)
                except sqlite3.IntegrityError as exc:
                    raise KeyConflict(f"signing keys conflict ({exc})") from exc
                if cursor.rowcount != 1:
                    raise KeyConflict(f"signing keys changed meanwhile: {change!r} no longer applies")
            return changes

        # BEGIN IMMEDIATE takes the write lock before reading: plans of two processes serialise.
        return await self._transaction(go)

    async def keys_version(self) -> int:
        def go(c: sqlite3.Connection) -> int:
            rows = c.execute(
                "SELECT kid, state, kek_id, private_jwk IS NULL FROM signing_keys ORDER BY kid"
            ).fetchall()
            return zlib.crc32(repr(rows).encode())

        return await self._run(go)

    async def watch_keys(
        self,
        on_change: Callable[[], Awaitable[None]],
        *,
        known_version: int | None = None,
        poll_interval: float = 2.0,
    ) -> None:
        # One file, usually one process: polling the key table is cheap and sees the CLI's rotations.
        last = known_version
        while True:
            try:
                version = await self.keys_version()
                if last is not None and version != last:
                    await on_change()
                last = version
            except Exception as exc:  # keep watching through outages and callback errors
                log.warning("key_watch_failed", error=exc.__class__.__name__)
            await asyncio.sleep(poll_interval)

    # -- audit ----------------------------------------------------------------------------------------

    async def append_audit(self, records: Sequence[AuditRecord]) -> None:
        rows = [sql.audit_row(r) for r in records]

        def go(c: sqlite3.Connection) -> None:
            c.executemany(_INSERT_AUDIT, rows)

        await self._transaction(go)

    async def list_audit(
        self, where: AuditFilter | None = None, *, limit: int = 100, before: int | None = None
    ) -> list[AuditRecord]:
        query, params = sql.list_audit_query(where, limit, before)
        rows = await self._run(lambda c: c.execute(sql.for_sqlite(query), params).fetchall())
        return [sql.audit_record(row) for row in rows]

    async def export_audit(self, *, after: int = 0, limit: int = 1000) -> list[AuditRecord]:
        rows = await self._run(lambda c: c.execute(_EXPORT_AUDIT, (after, limit)).fetchall())
        return [sql.audit_record(row) for row in rows]

    async def count_audit(self, where: AuditFilter | None = None) -> list[AuditCount]:
        query, params = sql.count_audit_query(where)
        rows = await self._run(lambda c: c.execute(sql.for_sqlite(query), params).fetchall())
        return sql.audit_counts(rows)

    async def purge_audit(self, before: float, *, batch: int = 10_000) -> int:
        def go(c: sqlite3.Connection) -> int:
            records = c.execute(_PURGE_AUDIT, (before, batch)).rowcount
            return int(records + c.execute(_PURGE_DENIAL_COUNTS, (before,)).rowcount)

        return await self._transaction(go)

    async def add_denial_counts(self, counts: Sequence[DenialCount]) -> None:
        rows = [sql.denial_count_row(c) for c in counts]

        def go(c: sqlite3.Connection) -> None:
            c.executemany(_ADD_DENIAL_COUNT, rows)

        await self._transaction(go)

    async def list_denial_counts(self, *, since: float = 0.0, limit: int = 1000) -> list[DenialCount]:
        rows = await self._run(lambda c: c.execute(_LIST_DENIAL_COUNTS, (since, limit)).fetchall())
        return [sql.denial_count(r) for r in rows]

    # -- single use, rate limits ----------------------------------------------------------------------

    async def consume_jti(self, issuer: str, jti: str, expires_at: float) -> bool:
        row = await self._run(lambda c: c.execute(_CONSUME_JTI, (issuer, jti, expires_at)).fetchone())
        return row is not None

    async def increment_counter(self, key: str, window_start: int, expires_at: float) -> int:
        row = await self._run(
            lambda c: c.execute(_INCREMENT_COUNTER, (key, window_start, expires_at)).fetchone()
        )
        return int(row[0])

    async def purge_expired(self, now: float) -> int:
        def go(c: sqlite3.Connection) -> int:
            replays = c.execute(_PURGE_REPLAYS, (now,)).rowcount
            return int(replays + c.execute(_PURGE_COUNTERS, (now,)).rowcount)

        return await self._transaction(go)

    # -- python rules ---------------------------------------------------------------------------------

    async def rule_query(
        self, sql: str, params: Sequence[object], *, max_rows: int = 100
    ) -> list[Mapping[str, Any]]:
        readonly = self._readonly
        if readonly is None:
            raise StoreUnavailable("rule queries need a file-backed SQLite store")
        # `$1` is a valid named parameter in SQLite, so rules use one style for both backends.
        named = {str(i): value for i, value in enumerate(params, start=1)}

        def go(_: sqlite3.Connection) -> list[Mapping[str, Any]]:
            try:
                cursor = readonly.execute(sql, named)
                names = [column[0] for column in cursor.description or ()]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchmany(max_rows)]
            except sqlite3.Error as exc:  # the query was refused (bad SQL, a write): not an outage
                raise ValueError(f"rule query refused: {exc}") from None

        return await self._run(go)
