"""Schema migrations for both backends: plain numbered SQL files, applied once, in order, by whoever
holds the lock, and recorded with their checksums.

Files live in `exchange/store/migrations/<backend>/NNNN_name.sql` and never change once released.
One runner decides for both backends (`plan`): what is pending, and that every applied file is still
the text that was applied (an edited file is reported by `status`, and refused by `migrate`). Each
backend only supplies the transaction and the lock around it:

- PostgreSQL: ONE transaction that first takes a transaction-scoped advisory lock, so two replicas (or
  a replica and the one-shot `exchange db migrate`) starting together serialise on it; the second finds
  the work done and applies nothing.
- SQLite: ONE `BEGIN IMMEDIATE` transaction (the database's write lock, taken first), with the busy
  timeout raised to MIGRATION_TIMEOUT while waiting for it.

A failure rolls the whole run back, so the schema is never half-migrated. The ledger is the same on
both: `schema_migrations (version, name, checksum, applied_at)`.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Literal, TypeAlias

from exchange.store.base import StoreUnavailable
from exchange.store.sql import for_sqlite

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    # A plain connection (CLI) or one borrowed from the store's pool: both run migrations alike.
    AnyConnection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

Backend = Literal["sqlite", "postgres"]

# Any fixed 64-bit number: it only has to be the same for every process migrating this database.
MIGRATION_LOCK_ID = 0x7075_7270_6F73_6531  # "purpose1"
# Seconds any one migration statement may take, waiting for another migrator's lock included.
MIGRATION_TIMEOUT = 300.0

_PG_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
_SQLITE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at TEXT NOT NULL
)
"""
_RECORD = "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)"


class MigrationError(Exception):
    """The schema cannot be brought up to date safely (e.g. an applied file was edited)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Applied:
    """One ledger row."""

    version: int
    name: str
    checksum: str
    # None only in SQLite ledgers written before applied_at was recorded.
    applied_at: datetime | None


@dataclass(frozen=True, slots=True)
class MigrationState:
    version: int
    name: str
    applied: bool
    applied_at: datetime | None = None
    # False when the applied file's text differs from what was applied (someone edited a released file).
    checksum_ok: bool = True


def migrations(backend: Backend) -> list[Migration]:
    """The packaged migrations of one backend, in version order."""
    folder = resources.files("exchange.store") / "migrations" / backend
    found: list[Migration] = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            prefix = entry.name.split("_", 1)[0]
            if not prefix.isdigit():
                raise MigrationError(f"migration file {entry.name!r} does not start with a number")
            found.append(Migration(int(prefix), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


def plan(known: list[Migration], applied: Mapping[int, Applied]) -> list[Migration]:
    """The migrations still to apply, in order; refuses if an applied file's text has changed."""
    todo: list[Migration] = []
    for m in known:
        done = applied.get(m.version)
        if done is None:
            todo.append(m)
        elif done.checksum != m.checksum:
            raise MigrationError(f"migration {m.name} was changed after it was applied; refusing to go on")
    return todo


def states(known: list[Migration], applied: Mapping[int, Applied]) -> list[MigrationState]:
    """Every known migration with whether (and when) it was applied; also applied ones we do not know."""
    rest = dict(applied)
    out: list[MigrationState] = []
    for m in known:
        done = rest.pop(m.version, None)
        if done is None:
            out.append(MigrationState(m.version, m.name, applied=False))
        else:
            out.append(MigrationState(m.version, m.name, True, done.applied_at, done.checksum == m.checksum))
    # Applied by a newer release than this one: the schema is ahead of the code.
    out.extend(MigrationState(a.version, a.name, True, a.applied_at) for a in rest.values())
    return sorted(out, key=lambda s: s.version)


def pending(found: list[MigrationState]) -> list[MigrationState]:
    return [s for s in found if not s.applied]


def require_current(found: list[MigrationState], backend: Backend) -> None:
    """A store opened without migrating refuses a schema that is behind this code."""
    behind = pending(found)
    if behind:
        raise StoreUnavailable(
            f"{_LABEL[backend]}: schema is behind ({len(behind)} pending migration(s));"
            " run `exchange db migrate`"
        )


_LABEL: Mapping[Backend, str] = {"sqlite": "sqlite", "postgres": "postgresql"}


# -- PostgreSQL ------------------------------------------------------------------------------------------


async def migrate_postgres(conn: AnyConnection, *, statement_timeout: float = MIGRATION_TIMEOUT) -> list[str]:
    """Apply every pending migration in one transaction; return the names applied (maybe none).

    `statement_timeout` bounds each statement, waiting for the lock included: it replaces the connection's
    request-sized command timeout, since a replica may wait here while another one migrates.
    """
    async with conn.transaction():
        # First statement of the transaction: everything after it, including creating the ledger,
        # happens with the lock held, so concurrent migrators cannot interleave.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID, timeout=statement_timeout)
        await conn.execute(_PG_LEDGER, timeout=statement_timeout)
        todo = plan(migrations("postgres"), await _pg_ledger(conn))
        now = datetime.now(UTC)
        for m in todo:
            await conn.execute(m.sql, timeout=statement_timeout)
            await conn.execute(_RECORD, m.version, m.name, m.checksum, now, timeout=statement_timeout)
        return [m.name for m in todo]


async def postgres_status(conn: AnyConnection) -> list[MigrationState]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    return states(migrations("postgres"), await _pg_ledger(conn) if exists else {})


async def _pg_ledger(conn: AnyConnection) -> dict[int, Applied]:
    rows = await conn.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations")
    return {r["version"]: Applied(r["version"], r["name"], r["checksum"], r["applied_at"]) for r in rows}


# -- SQLite ----------------------------------------------------------------------------------------------


def migrate_sqlite(conn: sqlite3.Connection) -> list[str]:
    """Apply every pending migration in one BEGIN IMMEDIATE transaction; the names applied (maybe none).

    `conn` must be in autocommit mode (isolation_level=None), as the store's connection is.
    """
    (busy_ms,) = conn.execute("PRAGMA busy_timeout").fetchone()
    conn.execute(f"PRAGMA busy_timeout = {int(MIGRATION_TIMEOUT * 1000)}")
    try:
        # BEGIN IMMEDIATE takes the write lock first, so two processes starting together migrate once.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_SQLITE_LEDGER)
            _upgrade_sqlite_ledger(conn)
            todo = plan(migrations("sqlite"), _sqlite_ledger(conn))
            now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
            for m in todo:
                for statement in split_sql(m.sql):
                    conn.execute(statement)
                conn.execute(for_sqlite(_RECORD), (m.version, m.name, m.checksum, now))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
    return [m.name for m in todo]


def sqlite_status(conn: sqlite3.Connection | None) -> list[MigrationState]:
    """`conn` may be read-only, or None for a database file that does not exist yet."""
    exists = (
        conn is not None
        and conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
    )
    return states(migrations("sqlite"), _sqlite_ledger(conn) if conn is not None and exists else {})


def _sqlite_ledger(conn: sqlite3.Connection) -> dict[int, Applied]:
    columns = {row[1] for row in conn.execute("PRAGMA table_info(schema_migrations)")}
    if "checksum" not in columns:  # a ledger from before checksums, read by `status` (read-only)
        rows = [(v, n, None, None) for v, n in conn.execute("SELECT version, name FROM schema_migrations")]
    else:
        rows = conn.execute("SELECT version, name, checksum, applied_at FROM schema_migrations").fetchall()
    known = {m.version: m.checksum for m in migrations("sqlite")}
    return {
        version: Applied(
            version,
            name,
            # Unrecorded (older ledger): the packaged file is taken as what was applied.
            checksum if checksum is not None else known.get(version, ""),
            datetime.fromisoformat(applied_at) if applied_at else None,
        )
        for version, name, checksum, applied_at in rows
    }


def _upgrade_sqlite_ledger(conn: sqlite3.Connection) -> None:
    """Ledgers written before checksums had (version, name) only: add the columns and record the
    packaged files' checksums for what was applied (it was applied from these same files)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(schema_migrations)")}
    if "checksum" in columns:
        return
    conn.execute("ALTER TABLE schema_migrations ADD COLUMN checksum TEXT")
    conn.execute("ALTER TABLE schema_migrations ADD COLUMN applied_at TEXT")
    for m in migrations("sqlite"):
        conn.execute("UPDATE schema_migrations SET checksum = ? WHERE version = ?", (m.checksum, m.version))


def split_sql(sql: str) -> list[str]:
    """Split a migration into statements; trigger bodies (BEGIN ... END;) stay whole.

    (sqlite3's executescript would commit first, breaking the one-transaction rule.)
    """
    statements: list[str] = []
    buffer: list[str] = []
    for line in sql.splitlines():
        if line.strip().startswith("--") and not buffer:
            continue
        buffer.append(line)
        candidate = "\n".join(buffer)
        if candidate.rstrip().endswith(";") and sqlite3.complete_statement(candidate):
            statements.append(candidate.strip())
            buffer = []
    if "".join(buffer).strip():
        statements.append("\n".join(buffer).strip())
    return statements
