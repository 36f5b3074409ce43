"""The store contract runs once per backend: every test taking `store` gets an SQLite and a PostgreSQL run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from exchange.store import Store, open_store
from schemas.config import StoreConfig

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    # Only the PostgreSQL run asks for a server, so SQLite runs never skip for want of one.
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store_config(store_url: str) -> Callable[..., StoreConfig]:
    """StoreConfig for this backend, with overrides (short timeouts keep failure tests fast)."""

    def make(**overrides: object) -> StoreConfig:
        return StoreConfig(url=store_url, **overrides)  # type: ignore[arg-type]

    return make


@pytest.fixture
async def store(store_config: Callable[..., StoreConfig]) -> AsyncIterator[Store]:
    opened = await open_store(store_config(pool_max_size=20))
    try:
        yield opened
    finally:
        await opened.close()
