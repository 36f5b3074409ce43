"""Persistence: the backend is picked from the store URL, in this one place.

`open_store` gives a store honouring `exchange.store.base.Store`; `migrate_database` and
`database_status` serve `exchange db migrate|status` on either backend through the one migration
runner (`exchange.store.migrate`), with a plain connection rather than an opened store (a store opened
without migrating refuses a schema that is behind, and `status` must not create an SQLite file).
"""

from __future__ import annotations

import asyncio

from exchange.store.base import Store, StoreUnavailable
from exchange.store.migrate import Backend, MigrationState
from schemas.config import StoreConfig

__all__ = [
    "Store",
    "StoreUnavailable",
    "backend_of",
    "database_status",
    "make_store",
    "migrate_database",
    "open_store",
]


def backend_of(url: str) -> Backend:
    """`sqlite:///...` or `postgresql://...` (also `postgres://`); anything else is a config error."""
    if url.startswith("sqlite:///"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgres"
    raise ValueError(
        f"store.url: unsupported scheme in {url.split(':', 1)[0]!r}; use sqlite:/// or postgresql://"
    )


def make_store(config: StoreConfig) -> Store:
    """An unopened store for the configured URL."""
    if backend_of(config.url) == "sqlite":
        from exchange.store.sqlite import SQLiteStore

        return SQLiteStore(config)
    from exchange.store.postgres import PostgresStore

    return PostgresStore(config)


async def open_store(config: StoreConfig) -> Store:
    """Make and open the store (migrating when `migrate_on_start`)."""
    store = make_store(config)
    await store.open()
    return store


async def migrate_database(config: StoreConfig) -> list[str]:
    """Bring the schema up to date; the names of the migrations applied now (maybe none)."""
    from exchange.store import migrate

    if backend_of(config.url) == "postgres":
        from exchange.store.pgpool import connect

        conn = await connect(config, "purpose-exchange-migrate")
        try:
            return await migrate.migrate_postgres(conn)
        finally:
            await conn.close()

    from exchange.store.sqlite import connect as sqlite_connect
    from exchange.store.sqlite import sqlite_path

    def run() -> list[str]:
        conn = sqlite_connect(sqlite_path(config.url), config.command_timeout)
        try:
            return migrate.migrate_sqlite(conn)
        finally:
            conn.close()

    return await asyncio.to_thread(run)


async def database_status(config: StoreConfig) -> list[MigrationState]:
    """Each migration and whether it is applied (and when); never creates or changes anything."""
    from exchange.store import migrate

    if backend_of(config.url) == "postgres":
        from exchange.store.pgpool import connect

        conn = await connect(config, "purpose-exchange-migrate")
        try:
            return await migrate.postgres_status(conn)
        finally:
            await conn.close()

    import sqlite3

    from exchange.store.sqlite import connect_readonly, sqlite_path

    def run() -> list[MigrationState]:
        try:
            conn = connect_readonly(sqlite_path(config.url), config.command_timeout)
        except sqlite3.OperationalError:  # no such file yet: nothing is applied
            return migrate.sqlite_status(None)
        try:
            return migrate.sqlite_status(conn)
        finally:
            conn.close()

    return await asyncio.to_thread(run)
