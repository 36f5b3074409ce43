"""The one migration runner, on both backends: applied once, in one transaction, with checksums."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import asyncpg
import pytest

from exchange.store import StoreUnavailable, backend_of, database_status, migrate_database, open_store
from exchange.store import migrate as migrations
from exchange.store.sqlite import sqlite_path
from schemas.config import StoreConfig

TABLES = {"schema_migrations", "signing_keys", "audit_records", "replay_records", "rate_counters"}


async def sql(url: str, statement: str) -> list[tuple[object, ...]]:
    """Run one statement on the database behind `url`, as an operator at a SQL prompt would."""
    if backend_of(url) == "sqlite":
        with sqlite3.connect(sqlite_path(url)) as conn:
            return [tuple(r) for r in conn.execute(statement).fetchall()]
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r.values()) for r in await conn.fetch(statement)]
    finally:
        await conn.close()


async def tables(url: str) -> set[str]:
    if backend_of(url) == "sqlite":
        rows = await sql(url, "SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = await sql(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {str(r[0]) for r in rows}


def packaged(backend: str) -> list[tuple[int, str, str]]:
    folder = resources.files("exchange.store") / "migrations" / backend
    files = sorted(f.name for f in folder.iterdir() if f.name.endswith(".sql"))
    return [
        (int(name[:4]), name, hashlib.sha256((folder / name).read_text().encode()).hexdigest())
        for name in files
    ]


async def test_a_fresh_database_gets_every_migration_once_with_its_checksum(
    store_config: Callable[..., StoreConfig],
) -> None:
    config = store_config()
    files = packaged(backend_of(config.url))

    assert await migrate_database(config) == [name for _, name, _ in files]
    assert await migrate_database(config) == []

    assert TABLES <= await tables(config.url)
    ledger = await sql(config.url, "SELECT version, name, checksum FROM schema_migrations ORDER BY version")
    assert ledger == files
    states = await database_status(config)
    assert [(s.version, s.applied, s.checksum_ok) for s in states] == [(v, True, True) for v, _, _ in files]
    assert all(s.applied_at is not None for s in states)


async def test_concurrent_migrators_all_succeed_and_apply_once(
    store_config: Callable[..., StoreConfig],
) -> None:
    config = store_config()
    files = [name for _, name, _ in packaged(backend_of(config.url))]

    results = await asyncio.gather(*(migrate_database(config) for _ in range(5)))

    assert sorted(results) == [[], [], [], [], files]
    assert await sql(config.url, "SELECT count(*) FROM schema_migrations") == [(len(files),)]


async def test_stores_opening_together_on_an_empty_database_all_open(
    store_config: Callable[..., StoreConfig],
) -> None:
    stores = await asyncio.gather(*(open_store(store_config(pool_max_size=2)) for _ in range(4)))
    try:
        await asyncio.gather(*(s.ping() for s in stores))
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_status_of_an_empty_database_is_all_pending_and_creates_nothing(
    store_config: Callable[..., StoreConfig],
) -> None:
    config = store_config()

    states = await database_status(config)

    assert [(s.name, s.applied, s.applied_at) for s in states] == [
        (name, False, None) for _, name, _ in packaged(backend_of(config.url))
    ]
    if backend_of(config.url) == "sqlite":
        assert not await asyncio.to_thread(Path(sqlite_path(config.url)).exists)
    else:
        assert "schema_migrations" not in await tables(config.url)


async def test_an_edited_applied_migration_is_refused_and_reported(
    store_config: Callable[..., StoreConfig],
) -> None:
    config = store_config()
    await migrate_database(config)
    await sql(config.url, "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1 RETURNING 1")

    with pytest.raises(migrations.MigrationError, match=r"0001_init\.sql was changed after it was applied"):
        await migrate_database(config)
    with pytest.raises(migrations.MigrationError, match=r"0001_init\.sql was changed"):
        await open_store(config)  # migrate_on_start runs the same check
    first = (await database_status(config))[0]
    assert (first.name, first.checksum_ok) == ("0001_init.sql", False)


async def test_without_migrate_on_start_an_unmigrated_database_is_unavailable(
    store_config: Callable[..., StoreConfig],
) -> None:
    config = store_config(migrate_on_start=False)
    count = len(packaged(backend_of(config.url)))
    with pytest.raises(StoreUnavailable, match=rf"schema is behind \({count} pending migration"):
        await open_store(config)

    await migrate_database(config)
    store = await open_store(config)
    await store.ping()
    await store.close()


async def test_an_sqlite_ledger_from_before_checksums_is_upgraded_in_place(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    [(version, name, checksum)] = packaged("sqlite")[:1]
    with sqlite3.connect(sqlite_path(url)) as conn:  # what releases before checksums left behind
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        for statement in migrations.split_sql(migrations.migrations("sqlite")[0].sql):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, name))
    config = StoreConfig(url=url)

    before = await database_status(config)  # read-only: reported applied, time unknown
    assert (before[0].applied, before[0].applied_at, before[0].checksum_ok) == (True, None, True)

    assert name not in await migrate_database(config)
    ledger = await sql(url, "SELECT version, name, checksum FROM schema_migrations WHERE version = 1")
    assert ledger == [(version, name, checksum)]


async def test_the_key_lifecycle_migration_maps_the_old_states_and_destroys_retired_keys(
    store_config: Callable[..., StoreConfig],
) -> None:
    config = store_config()
    backend = backend_of(config.url)
    folder = resources.files("exchange.store") / "migrations" / backend
    before = [(v, name, checksum) for v, name, checksum in packaged(backend) if v < 6]
    old_rows = [
        ("a", "active", 30.0, None, b"sealed-a"),
        ("r", "retiring", 20.0, 30.0, b"sealed-r"),
        ("x", "retired", 10.0, 20.0, b"sealed-x"),
    ]
    insert = "INSERT INTO signing_keys (kid, alg, state, created_at, retired_at, public_jwk, private_jwk)"
    if backend == "sqlite":
        with sqlite3.connect(sqlite_path(config.url)) as conn:
            conn.execute(migrations._SQLITE_LEDGER)
            for v, name, checksum in before:
                conn.executescript((folder / name).read_text())
                record = (v, name, checksum, datetime.now(UTC).isoformat())
                conn.execute(migrations.for_sqlite(migrations._RECORD), record)
            conn.executemany(insert + " VALUES (?, 'ES256', ?, ?, ?, '{}', ?)", old_rows)
        conn.close()
    else:
        pg = await asyncpg.connect(config.url)
        try:
            await pg.execute(migrations._PG_LEDGER)
            for v, name, checksum in before:
                await pg.execute((folder / name).read_text())
                await pg.execute(migrations._RECORD, v, name, checksum, datetime.now(UTC))
            await pg.executemany(insert + " VALUES ($1, 'ES256', $2, $3, $4, '{}', $5)", old_rows)
        finally:
            await pg.close()

    assert await migrate_database(config) == ["0006_key_lifecycle.sql"]

    store = await open_store(config)
    try:
        keys = {k.kid: k for k in await store.list_keys()}
    finally:
        await store.close()
    assert {kid: (k.state, k.activated_at, k.deactivated_at, k.retired_at) for kid, k in keys.items()} == {
        "a": ("current", 30.0, None, None),
        "r": ("previous", 20.0, 30.0, None),
        "x": ("retired", None, 20.0, 20.0),
    }
    assert {kid: k.private_jwk for kid, k in keys.items()} == {"a": b"sealed-a", "r": b"sealed-r", "x": None}
