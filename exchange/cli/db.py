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
from typing import Any, TypeVar

import click

from exchange.cli.console import config_option, fail, json_option, settings_or_exit
from exchange.cli.output import emit_lines, emit_object, table, utc, utc_seconds
from exchange.store import backend_of, database_status, migrate_database
from exchange.store import migrate as migrations
from exchange.store.base import StoreUnavailable
from schemas.output import MigrateResult, MigrationLine

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
@json_option
def db_migrate(config_file: str | None, as_json: bool) -> None:
    """Apply pending migrations (one transaction, under a lock); safe to run from several places."""
    settings = settings_or_exit(config_file)
    applied = _run(migrate_database(settings.store))
    backend = "postgresql" if backend_of(settings.store.url) == "postgres" else "sqlite"
    if as_json:
        emit_object(MigrateResult(backend=backend, applied=applied))
    elif applied:
        for name in applied:
            click.echo(f"applied {name}")
        click.echo(f"{backend}: {len(applied)} migration(s) applied; schema is up to date")
    else:
        click.echo(f"{backend}: schema is up to date; nothing to apply")


@db_group.command("status")
@config_option
@json_option
def db_status(config_file: str | None, as_json: bool) -> None:
    """List migrations and whether each is applied; exit 1 if an applied file was changed."""
    settings = settings_or_exit(config_file)
    states = _run(database_status(settings.store))
    if as_json:
        emit_lines(
            MigrationLine(
                version=s.version,
                name=s.name,
                applied=s.applied,
                applied_at=None if s.applied_at is None else utc(s.applied_at.timestamp()),
                checksum_ok=s.checksum_ok,
            )
            for s in states
        )
    else:
        table(
            ["VERSION", "STATE", "APPLIED AT", "NAME"],
            (
                [
                    s.version,
                    _state(s),
                    "-" if s.applied_at is None else utc_seconds(s.applied_at.timestamp()),
                    s.name,
                ]
                for s in states
            ),
            widths=[None, None, None, None],
        )
        behind = migrations.pending(states)
        click.echo(f"{len(behind)} pending" if behind else "schema is up to date")
    if any(not s.checksum_ok for s in states):
        fail("an applied migration file was changed after it was applied")


def _state(s: migrations.MigrationState) -> str:
    if not s.checksum_ok:
        return "CHANGED"
    return "applied" if s.applied else "pending"
