"""PostgreSQL connections for the store: the bounded asyncpg pool, plain one-off connections
(migrations, the key watch), and the one decision of which failures mean "the database is unavailable".

Failure contract: anything that means "the database is not answering properly now" (connection refused
or lost, pool or statement timeout, server shutting down, schema missing) is raised as
`StoreUnavailable`, within `connect_timeout + command_timeout` seconds, so the app answers 503 instead
of hanging. A value the server cannot store is the caller's ValueError. Once the database returns the
pool reconnects by itself on the next call. Messages never carry the DSN (it may hold a password).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING

import asyncpg

from exchange.store.base import StoreUnavailable
from schemas.config import StoreConfig

if TYPE_CHECKING:
    from exchange.store.migrate import AnyConnection as PooledConnection

# SQLSTATE classes that mean the server cannot serve us now (connection exception, insufficient
# resources, operator intervention such as shutdown or cancel, system error), as opposed to a query
# the server understood and refused.
OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "58"})

# The failures that mean "the database is unavailable", as opposed to a bug in the caller.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, DNS (socket.gaierror is an OSError)
    TimeoutError,  # connect, acquire or statement took longer than configured
    asyncpg.InterfaceError,  # connection closed underneath us, pool closing
    # A connection the server terminated while it sat idle in the pool (admin shutdown, failover) can
    # surface as a protocol-state error on its next use rather than as a clean disconnect.
    asyncpg.InternalClientError,
    asyncpg.PostgresError,  # includes admin shutdown, too many connections, query canceled, missing table
)


def describe(exc: BaseException) -> str:
    """One line naming the failure, without the DSN (which may carry a password)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


async def connect(config: StoreConfig, application_name: str) -> asyncpg.Connection:
    """One plain connection outside any pool, bounded by the connect timeout."""
    try:
        async with asyncio.timeout(config.connect_timeout + config.command_timeout):
            return await asyncpg.connect(
                dsn=config.url,
                timeout=config.connect_timeout,
                command_timeout=config.command_timeout,
                server_settings={"application_name": application_name},
            )
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"postgresql: cannot connect: {describe(exc)}") from exc


# Idle pooled connections are recycled after this long, so a failed-over primary is picked up soon;
# the held connection (`Pool.held`) is replaced after as long unused, for the same reason.
MAX_IDLE_SECONDS = 60.0


def _server_settings(config: StoreConfig) -> dict[str, str]:
    return {
        "application_name": "purpose-exchange",
        # A connection stuck mid-transaction must not hold locks for long.
        "idle_in_transaction_session_timeout": str(int(config.command_timeout * 2000)),
    }


@contextmanager
def _mapped() -> Iterator[None]:
    """Every failure of a store call as the failure contract says (module docstring)."""
    try:
        yield
    except StoreUnavailable:
        raise
    except (ValueError, asyncpg.UniqueViolationError):
        # A caller's mistake, not an outage: asyncpg raises a ValueError for an argument it cannot
        # encode (e.g. an int beyond 64 bits); insert_key turns a duplicate kid into one.
        raise
    except asyncpg.DataError as exc:  # the server's SQLSTATE class 22: a value it cannot store
        raise ValueError(f"postgresql refused a value: {describe(exc)}") from exc
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"postgresql: {describe(exc)}") from exc


class Pool:
    """The store's pool: created by `open()`, every borrowed connection bounded and failure-mapped.

    Beside it, one held connection (`held()`) for a caller that runs one statement at a time, again
    and again: the audit writer's batch insert. A pooled connection costs an acquire and a release per
    call, and the release runs asyncpg's reset query (one more round trip and transaction per batch;
    ~115 µs of our CPU and ~350 µs of wall time per batch against a held connection's 52-68 µs, in
    bench/RESULTS.md). The held connection has the pool's settings and bounds; any failure on it
    closes it, and the next call connects afresh (what the pool does for a broken connection).
    """

    def __init__(self, config: StoreConfig) -> None:
        self._config = config
        self._pool: asyncpg.Pool | None = None
        # Hard bound on any one store call: getting a connection plus running its statements.
        self.deadline = config.connect_timeout + config.command_timeout
        self._held: asyncpg.Connection | None = None
        self._held_used = 0.0
        self._held_busy = False

    async def open(self) -> None:
        cfg = self._config
        try:
            async with asyncio.timeout(self.deadline):
                self._pool = await asyncpg.create_pool(
                    dsn=cfg.url,
                    min_size=min(cfg.pool_min_size, cfg.pool_max_size),
                    max_size=cfg.pool_max_size,
                    timeout=cfg.connect_timeout,
                    command_timeout=cfg.command_timeout,
                    # Idle connections are recycled, so a failed-over primary is picked up soon.
                    max_inactive_connection_lifetime=MAX_IDLE_SECONDS,
                    server_settings=_server_settings(cfg),
                )
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"postgresql: cannot connect: {describe(exc)}") from exc

    async def close(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            try:
                await asyncio.wait_for(held.close(), self.deadline)
            except UNAVAILABLE:
                held.terminate()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.deadline)
            except UNAVAILABLE:
                # Graceful close did not finish (database gone): drop the sockets rather than hang.
                pool.terminate()

    @asynccontextmanager
    async def connection(self, *, deadline: float | None = None) -> AsyncIterator[PooledConnection]:
        """A pooled connection for one store call, with every unavailability mapped to StoreUnavailable."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("postgresql: store is not open")
        with _mapped():
            async with asyncio.timeout(deadline or self.deadline):
                async with pool.acquire(timeout=self._config.connect_timeout) as conn:
                    yield conn

    @asynccontextmanager
    async def held(self) -> AsyncIterator[PooledConnection]:
        """The held connection for one store call (see the class docstring), bounded and mapped like
        `connection()`; while it is in use by another call, a pooled one (never two statements at once
        on one connection)."""
        if self._pool is None:
            raise StoreUnavailable("postgresql: store is not open")
        if self._held_busy:
            async with self.connection() as pooled:
                yield pooled
            return
        self._held_busy = True
        try:
            with _mapped():
                async with asyncio.timeout(self.deadline):
                    conn = self._held
                    if conn is not None and (
                        conn.is_closed() or time.monotonic() - self._held_used > MAX_IDLE_SECONDS
                    ):
                        self._held = None
                        conn.terminate()
                        conn = None
                    if conn is None:
                        conn = self._held = await self._connect_held()
                    try:
                        yield conn
                    except BaseException:
                        # A statement that failed or was cut off may leave the connection mid-protocol:
                        # drop it, the next call connects afresh.
                        if self._held is conn:
                            self._held = None
                        conn.terminate()
                        raise
                    self._held_used = time.monotonic()
        finally:
            self._held_busy = False

    async def _connect_held(self) -> asyncpg.Connection:
        cfg = self._config
        conn: asyncpg.Connection = await asyncpg.connect(
            dsn=cfg.url,
            timeout=cfg.connect_timeout,
            command_timeout=cfg.command_timeout,
            server_settings=_server_settings(cfg),
        )
        if self._pool is None:  # closed while connecting
            conn.terminate()
            raise StoreUnavailable("postgresql: store is not open")
        return conn
