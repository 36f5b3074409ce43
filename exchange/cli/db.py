"""`exchange db migrate` and `exchange db status`: the schema, for operators and deploy pipelines.

`migrate` applies pending numbered migrations in one transaction under a lock (PostgreSQL: an advisory
lock; SQLite: BEGIN IMMEDIATE), safe to run from several places at once (a one-shot job and replicas
starting with `migrate_on_start`); `status` lists each migration, whether and when it was applied, and
whether the applied file is unchanged (checksums, on both backends). See `exchange.store.migrate`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import msgspec

from exchange.cli.console import config_option, fail, settings_or_exit
from exchange.store import backend_of, database_status, migrate_database
from exchange.store import migrate as migrations
from exchange.store.base import StoreUnavailable

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one command; database trouble becomes one sentence and exit 1, never a traceback."""
    try:
        return asyncio.run(coro)
    except migrations.MigrationError as exc:
        fail(str(exc))
    except StoreUnavailable as exc:
        fail(f"the database is unavailable: {exc}")
    except (OSError, TimeoutError) as exc:
        fail(f"the database is unavailable: {exc.__class__.__name__}: {exc}")
    except sqlite3.Error as exc:
        fail(f"sqlite: {exc}")
    raise AssertionError("unreachable")  # fail exits


@click.group("db")
def db_group() -> None:
    """The store's schema: migrate it, or see where it stands."""


@db_group.command("migrate")
@config_option
def db_migrate(config_file: str | None) -> None:
    """Apply pending migrations (PostgreSQL: one transaction, under an advisory lock)."""
    settings = settings_or_exit(config_file)
    applied = _run(migrate_database(settings.store))
    backend = "postgresql" if backend_of(settings.store.url) == "postgres" else "sqlite"
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
    if as_json:
        for s in states:
            click.echo(
                msgspec.json.encode(
                    {
                        "version": s.version,
                        "name": s.name,
                        "applied": s.applied,
                        "applied_at": None if s.applied_at is None else _utc(s.applied_at),
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
            when = "-" if s.applied_at is None else _utc(s.applied_at)
            click.echo(f"{s.version:<8} {state:<9} {when:<26} {s.name}")
        behind = migrations.pending(states)
        click.echo(f"{len(behind)} pending" if behind else "schema is up to date")
    if any(not s.checksum_ok for s in states):
        fail("an applied migration file was changed after it was applied")


def _utc(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
