"""PostgreSQL schema migrations: plain numbered SQL files, applied once, in order, by whoever gets the lock.

Files live in `exchange/store/migrations/postgres/NNNN_name.sql` and never change once released (a
changed file is reported, and refused by `migrate`). `migrate()` runs everything pending in ONE
transaction that first takes a transaction-scoped advisory lock: two replicas (or a replica and the
one-shot `exchange db migrate`) starting together serialise on that lock, the second finds the work
done and applies nothing. A failure rolls the whole run back, so the schema is never half-migrated.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A plain connection (CLI) or one borrowed from the store's pool: both run migrations alike.
    AnyConnection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

# Any fixed 64-bit number: it only has to be the same for every process migrating this database.
MIGRATION_LOCK_ID = 0x7075_7270_6F73_6531  # "purpose1"
# Seconds any one migration statement may take, waiting for another migrator's lock included.
MIGRATION_TIMEOUT = 300.0

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


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
class MigrationState:
    version: int
    name: str
    applied_at: datetime | None
    # False when the applied file's text differs from what was applied (someone edited a released file).
    checksum_ok: bool = True

    @property
    def applied(self) -> bool:
        return self.applied_at is not None


def migrations() -> list[Migration]:
    """The packaged migrations, in version order."""
    folder = resources.files("exchange.store") / "migrations" / "postgres"
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


async def migrate(conn: AnyConnection, *, statement_timeout: float = MIGRATION_TIMEOUT) -> list[str]:
    """Apply every pending migration in one transaction; return the names applied (maybe none).

    `statement_timeout` bounds each statement, waiting for the lock included: it replaces the connection's
    request-sized command timeout, since a replica may wait here while another one migrates.
    """
    async with conn.transaction():
        # First statement of the transaction: everything after it, including creating the ledger,
        # happens with the lock held, so concurrent migrators cannot interleave.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID, timeout=statement_timeout)
        await conn.execute(_CREATE_LEDGER, timeout=statement_timeout)
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations", timeout=statement_timeout)
        done = {row["version"]: row["checksum"] for row in rows}
        applied: list[str] = []
        for m in migrations():
            if m.version in done:
                if done[m.version] != m.checksum:
                    raise MigrationError(
                        f"migration {m.name} was changed after it was applied; refusing to go on"
                    )
                continue
            await conn.execute(m.sql, timeout=statement_timeout)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                m.version,
                m.name,
                m.checksum,
                timeout=statement_timeout,
            )
            applied.append(m.name)
        return applied


async def status(conn: AnyConnection) -> list[MigrationState]:
    """Every known migration with whether (and when) it was applied; also applied ones we do not know."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    rows = (
        await conn.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version")
        if exists
        else []
    )
    applied = {row["version"]: row for row in rows}
    states: list[MigrationState] = []
    for m in migrations():
        row = applied.pop(m.version, None)
        if row is None:
            states.append(MigrationState(m.version, m.name, None))
        else:
            states.append(MigrationState(m.version, m.name, row["applied_at"], row["checksum"] == m.checksum))
    # Applied by a newer release than this one: the schema is ahead of the code.
    for version, row in sorted(applied.items()):
        states.append(MigrationState(version, row["name"], row["applied_at"], checksum_ok=True))
    return sorted(states, key=lambda s: s.version)


def pending(states: list[MigrationState]) -> list[MigrationState]:
    return [s for s in states if not s.applied]
