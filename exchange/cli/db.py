"""`exchange db migrate` and `exchange db status`: the schema, for operators and deploy pipelines.

PostgreSQL: `migrate` applies pending numbered migrations in one transaction under an advisory lock
(safe to run from several places at once: a one-shot job and replicas starting with
`migrate_on_start`); `status` lists each migration and whether it is applied. SQLite: the store
migrates itself when opened; these commands do the same on demand and report.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Coroutine
from datetime import UTC, datetime
from importlib import resources
from typing import Any, TypeVar

import asyncpg
import click
import msgspec

from exchange.cli.console import config_option, fail, settings_or_exit
from exchange.store import make_store
from exchange.store import migrate as migrations
from exchange.store.base import StoreUnavailable
from exchange.store.sqlite import sqlite_path
from schemas.config import StoreConfig

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one command; database trouble becomes one sentence and exit 1, never a traceback."""
    try:
        return asyncio.run(coro)
    except migrations.MigrationError as exc:
        fail(str(exc))
    except StoreUnavailable as exc:
        fail(f"the database is unavailable: {exc}")
    except (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError) as exc:
        fail(f"the database is unavailable: {exc.__class__.__name__}: {exc}")
    except sqlite3.Error as exc:
        fail(f"sqlite: {exc}")
    raise AssertionError("unreachable")  # _fail exits


def _is_postgres(config: StoreConfig) -> bool:
    return config.url.startswith(("postgresql://", "postgres://"))


async def _pg_connect(config: StoreConfig) -> asyncpg.Connection:
    # A single plain connection, not the store's pool: migrations run before any store is opened.
    async with asyncio.timeout(config.connect_timeout + 1):
        return await asyncpg.connect(
            dsn=config.url,
            timeout=config.connect_timeout,
            server_settings={"application_name": "purpose-exchange-migrate"},
        )


async def migrate_database(config: StoreConfig) -> list[str]:
    """Bring the schema up to date; the names of the migrations applied now (maybe none)."""
    if _is_postgres(config):
        conn = await _pg_connect(config)
        try:
            return await migrations.migrate(conn)
        finally:
            await conn.close()
    store = make_store(msgspec.structs.replace(config, migrate_on_start=False))
    await store.open()
    try:
        applied: list[str] = await store.migrate()  # type: ignore[attr-defined]
        return applied
    finally:
        await store.close()


async def database_status(config: StoreConfig) -> list[migrations.MigrationState]:
    if _is_postgres(config):
        conn = await _pg_connect(config)
        try:
            return await migrations.status(conn)
        finally:
            await conn.close()
    return _sqlite_status(config)


def _sqlite_status(config: StoreConfig) -> list[migrations.MigrationState]:
    folder = resources.files("exchange.store") / "migrations" / "sqlite"
    known = sorted(
        (int(f.name.split("_", 1)[0]), f.name) for f in folder.iterdir() if f.name.endswith(".sql")
    )
    path = sqlite_path(config.url)
    applied: dict[int, str] = {}
    # Read-only: `status` must not create the file it is asked about.
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=config.command_timeout)
    except sqlite3.OperationalError:
        conn = None
    if conn is not None:
        try:
            exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_migrations'").fetchone()
            if exists:
                applied = dict(conn.execute("SELECT version, name FROM schema_migrations").fetchall())
        finally:
            conn.close()
    # SQLite records no timestamp; "applied" is all there is to say.
    marker = datetime.fromtimestamp(0, UTC)
    return [migrations.MigrationState(v, n, marker if v in applied else None) for v, n in known]


@click.group("db")
def db_group() -> None:
    """The store's schema: migrate it, or see where it stands."""


@db_group.command("migrate")
@config_option
def db_migrate(config_file: str | None) -> None:
    """Apply pending migrations (PostgreSQL: one transaction, under an advisory lock)."""
    settings = settings_or_exit(config_file)
    applied = _run(migrate_database(settings.store))
    backend = "postgresql" if _is_postgres(settings.store) else "sqlite"
    if applied:
        for name in applied:
            click.echo(f"applied {name}")
        click.echo(f"{backend}: {len(applied)} migration(s) applied; schema is up to date")
    else:
        click.echo(f"{backend}: schema is up to date; nothing to apply")


@db_group.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per migration.")
def db_status(config_file: str | None, as_json: bool) -> None:
    """List migrations and whether each is applied; exit 1 if an applied file was changed."""
    settings = settings_or_exit(config_file)
    states = _run(database_status(settings.store))
    sqlite = not _is_postgres(settings.store)
    if as_json:
        for s in states:
            click.echo(
                msgspec.json.encode(
                    {
                        "version": s.version,
                        "name": s.name,
                        "applied": s.applied,
                        "applied_at": None if sqlite or s.applied_at is None else s.applied_at.isoformat(),
                        "checksum_ok": s.checksum_ok,
                    }
                ).decode()
            )
    else:
        click.echo(f"{'VERSION':<8} {'STATE':<9} {'APPLIED AT':<26} NAME")
        for s in states:
            state = "applied" if s.applied else "pending"
            if not s.checksum_ok:
                state = "CHANGED"
            when = "-" if s.applied_at is None or sqlite else s.applied_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            click.echo(f"{s.version:<8} {state:<9} {when:<26} {s.name}")
        behind = migrations.pending(states)
        click.echo(f"{len(behind)} pending" if behind else "schema is up to date")
    if any(not s.checksum_ok for s in states):
        fail("an applied migration file was changed after it was applied")
