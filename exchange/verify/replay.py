"""Replay guards: accept a single-use token's `jti` once, until the token could no longer verify.

`InMemoryReplayGuard` protects one process. `FileReplayGuard` protects every process on one host
sharing a file (an SQLite database: one atomic upsert decides, across processes, under its lock).
`PostgresReplayGuard` protects every replica sharing a database: one atomic INSERT ... ON CONFLICT
decides, so two replicas racing on the same jti cannot both win. asyncpg is imported inside that
class only, so `import exchange.verify` never pulls it in.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import re
import sqlite3
import stat
import threading
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

if TYPE_CHECKING:
    import asyncpg


class ReplayGuard(Protocol):
    async def consume(self, issuer: str, jti: str, expires_at: float, *, now: float) -> bool:
        """Record (issuer, jti) until `expires_at`: True the first time, False on every reuse."""
        ...


@runtime_checkable
class SyncReplayGuard(ReplayGuard, Protocol):
    def consume_sync(self, issuer: str, jti: str, expires_at: float, *, now: float) -> bool:
        """The same decision without awaiting (for the synchronous `verify`)."""
        ...


class InMemoryReplayGuard:
    """Seen jtis in a dict, expired ones dropped lazily in expiry order (a heap).

    Thread-safe, so a threaded WSGI service can share one. When `max_entries` live jtis are held the
    guard refuses new ones (fails closed) rather than forgetting live ones, which would re-open replay.
    """

    def __init__(self, *, max_entries: int = 1_000_000) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._expiry: list[tuple[float, tuple[str, str]]] = []
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def consume_sync(self, issuer: str, jti: str, expires_at: float, *, now: float) -> bool:
        entry = (issuer, jti)
        with self._lock:
            self._purge(now)
            if entry in self._seen or len(self._seen) >= self._max_entries:
                return False
            self._seen[entry] = expires_at
            heapq.heappush(self._expiry, (expires_at, entry))
            return True

    async def consume(self, issuer: str, jti: str, expires_at: float, *, now: float) -> bool:
        return self.consume_sync(issuer, jti, expires_at, now=now)

    def _purge(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, entry = heapq.heappop(self._expiry)
            self._seen.pop(entry, None)


class FileReplayGuard:
    """Single use across the processes of one host (server workers), in an SQLite file.

    The decision is one `INSERT ... ON CONFLICT DO UPDATE ... WHERE expired` statement, atomic under
    SQLite's write lock, so two workers racing on one jti cannot both win. The file is created 0600.
    Any database error refuses the token (fails closed) rather than risk accepting it twice.
    """

    _SCHEMA: Final = (
        "CREATE TABLE IF NOT EXISTS replays (issuer TEXT NOT NULL, jti TEXT NOT NULL,"
        " expires_at REAL NOT NULL, PRIMARY KEY (issuer, jti))"
    )
    _CONSUME: Final = (
        "INSERT INTO replays (issuer, jti, expires_at) VALUES (?, ?, ?) "
        "ON CONFLICT (issuer, jti) DO UPDATE SET expires_at = excluded.expires_at "
        "WHERE replays.expires_at <= ? RETURNING 1"
    )
    _PURGE_EVERY: Final = 1000

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = os.fspath(path)
        # Whoever else can write the file (or its journal) can delete a used jti and replay its token:
        # an existing file must be ours and private, and never a symlink (a path in a shared folder
        # could have been prepared by someone else). ValueError naming the file otherwise.
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ValueError(f"replay file {self.path}: cannot open it privately ({exc.strerror})") from None
        try:
            _require_private(self.path, os.fstat(fd))
        finally:
            os.close(fd)
        for side in ("-wal", "-shm", "-journal"):
            try:
                _require_private(self.path + side, os.lstat(self.path + side))
            except FileNotFoundError:
                pass
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = -1
        self._writes = 0

    def _connection(self) -> sqlite3.Connection:
        # One connection per process: a forked worker must not share its parent's.
        if self._db is None or self._pid != os.getpid():
            db = sqlite3.connect(self.path, timeout=self._busy_timeout, check_same_thread=False,
                                 isolation_level=None)  # fmt: skip
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(self._SCHEMA)
            self._db, self._pid = db, os.getpid()
        return self._db

    def consume_sync(self, issuer: str, jti: str, expires_at: float, *, now: float) -> bool:
        with self._lock:
            try:
                db = self._connection()
                won = db.execute(self._CONSUME, (issuer, jti, expires_at, now)).fetchone() is not None
                self._writes += 1
                if self._writes % self._PURGE_EVERY == 0:
                    db.execute("DELETE FROM replays WHERE expires_at <= ?", (now,))
            except sqlite3.Error:
                return False
            return won

    async def consume(self, issuer: str, jti: str, expires_at: float, *, now: float) -> bool:
        # The write is short but may wait on another process's lock: off the event loop.
        return await asyncio.to_thread(self.consume_sync, issuer, jti, expires_at, now=now)

    async def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _require_private(path: str, info: os.stat_result) -> None:
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise ValueError(f"replay file {path}: not a regular file")
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise ValueError(f"replay file {path}: others can read or write it (it must be ours, mode 0600)")


_IDENTIFIER: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresReplayGuard:
    """Single use across replicas, in table `{schema}.{table}` (created if missing by `open`).

    The pool is created by `open()` (or on first use) in the running event loop and closed by
    `close()`; use it as `async with PostgresReplayGuard(dsn) as guard:` or from an app lifespan.
    """

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "purpose_token_replays",
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 5,
        connect_timeout: float = 5.0,
        command_timeout: float = 5.0,
        create_table: bool = True,
    ) -> None:
        # Identifiers cannot be $n parameters, so they are restricted to a safe alphabet instead (which
        # is why the f-string SQL below is safe: values always travel as $n parameters).
        for name in (table, schema):
            if not _IDENTIFIER.match(name):
                raise ValueError(f"invalid SQL identifier {name!r}: use [a-z_][a-z0-9_]*")
        self._dsn = dsn
        self._qualified = f'"{schema}"."{table}"'
        self._schema = schema
        self._table = table
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._create_table = create_table
        self._pool: asyncpg.Pool | None = None
        self._open_lock: asyncio.Lock | None = None
        # A live row blocks reuse; an expired row is overwritten, so the table needs no purge to stay
        # correct (purge() only reclaims space).
        self._consume_sql = (
            f"INSERT INTO {self._qualified} AS r (issuer, jti, expires_at) VALUES ($1, $2, $3) "  # noqa: S608
            "ON CONFLICT (issuer, jti) DO UPDATE SET expires_at = EXCLUDED.expires_at "
            "WHERE r.expires_at <= $4 RETURNING 1"
        )

    async def __aenter__(self) -> PostgresReplayGuard:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._pool is not None:
            return
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._pool is not None:
                return
            import asyncpg

            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
            )
            if self._create_table:
                async with pool.acquire() as conn:
                    await conn.execute(
                        f'CREATE SCHEMA IF NOT EXISTS "{self._schema}";'
                        f"CREATE TABLE IF NOT EXISTS {self._qualified} ("
                        " issuer text NOT NULL, jti text NOT NULL,"
                        " expires_at double precision NOT NULL, PRIMARY KEY (issuer, jti));"
                        f'CREATE INDEX IF NOT EXISTS "{self._table}_expires_at"'
                        f" ON {self._qualified} (expires_at)"
                    )
            self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def consume(self, issuer: str, jti: str, expires_at: float, *, now: float) -> bool:
        if self._pool is None:
            await self.open()
        assert self._pool is not None
        row: Any = await self._pool.fetchval(self._consume_sql, issuer, jti, expires_at, now)
        return row is not None

    async def purge(self, now: float) -> int:
        """Delete rows whose token can no longer verify; returns how many went."""
        if self._pool is None:
            await self.open()
        assert self._pool is not None
        sql = f"DELETE FROM {self._qualified} WHERE expires_at <= $1"  # noqa: S608 - identifiers validated
        status: str = await self._pool.execute(sql, now)
        return int(status.rsplit(" ", 1)[-1])
