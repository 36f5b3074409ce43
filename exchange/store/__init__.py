"""Persistence: `open_store` picks the backend from the URL; both honour `exchange.store.base.Store`."""

from __future__ import annotations

from exchange.store.base import Store, StoreUnavailable
from schemas.config import StoreConfig

__all__ = ["Store", "StoreUnavailable", "make_store", "open_store"]


def make_store(config: StoreConfig) -> Store:
    """An unopened store for the configured URL (`sqlite:///...` or `postgresql://...`)."""
    url = config.url
    if url.startswith("sqlite:///"):
        from exchange.store.sqlite import SQLiteStore

        return SQLiteStore(config)
    if url.startswith(("postgresql://", "postgres://")):
        from exchange.store.postgres import PostgresStore

        return PostgresStore(config)
    raise ValueError(f"store.url: unsupported scheme in {url.split(':', 1)[0]!r}; use sqlite:/// or postgresql://")


async def open_store(config: StoreConfig) -> Store:
    """Make and open the store (migrating when `migrate_on_start`)."""
    store = make_store(config)
    await store.open()
    return store
