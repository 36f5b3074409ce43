"""The embedded store: one SQLite file, no server to run.

sqlite3 is synchronous, so every call runs on one dedicated thread; that thread owns the connection,
which also serialises writers the way SQLite wants. Durability: WAL with synchronous=FULL, so a
committed audit batch survives a crash; the auditor's group commit keeps that affordable.
"""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog

from exchange.store.base import StoreUnavailable
from schemas.config import StoreConfig
from schemas.records import AuditRecord, RuleOutcome, StoredKey

T = TypeVar("T")
log = structlog.get_logger("exchange.store")

_AUDIT_COLUMNS = (
    "time, request_id, decision, client_id, issuer, sub, purpose, audience, error, denial, reason, "
    "jti, exp, actor, rules"
)
# Statements built from the constant column list above, once; values always go as parameters.
_INSERT_AUDIT = f"INSERT INTO audit_records ({_AUDIT_COLUMNS}) VALUES ({', '.join('?' * 15)})"  # noqa: S608
_SELECT_AUDIT = f"SELECT {_AUDIT_COLUMNS} FROM audit_records"  # noqa: S608
_rules_encoder = msgspec.json.Encoder()
_rules_decoder = msgspec.json.Decoder(list[RuleOutcome])


def sqlite_path(url: str) -> str:
    """`sqlite:///relative.db`, `sqlite:////absolute.db` or `sqlite:///:memory:` to a sqlite3 path."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not an sqlite URL: {url!r}")
    return url[len("sqlite:///") :]


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("exchange.store") / "migrations" / "sqlite"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(found)


class SQLiteStore:
    def __init__(self, config: StoreConfig) -> None:
        self._path = sqlite_path(config.url)
        self._timeout = config.command_timeout
        self._migrate = config.migrate_on_start
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._readonly: sqlite3.Connection | None = None

    # -- plumbing -------------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._conn is None:
            raise StoreUnavailable("store is not open")
        conn = self._conn
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._executor, fn, conn), self._timeout)
        except sqlite3.IntegrityError as exc:  # a constraint, not an outage (as in PostgreSQL)
            raise ValueError(f"sqlite: {exc}") from exc
        except (sqlite3.OperationalError, sqlite3.DatabaseError, TimeoutError) as exc:
            raise StoreUnavailable(f"sqlite: {exc.__class__.__name__}") from exc

    def _connect(self) -> sqlite3.Connection:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self._path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _connect_readonly(self) -> sqlite3.Connection:
        """A second connection that cannot write, for python rules' queries."""
        conn = sqlite3.connect(
            f"file:{self._path}?mode=ro", uri=True, timeout=self._timeout, check_same_thread=False
        )
        conn.execute("PRAGMA query_only = ON")
        conn.row_factory = sqlite3.Row
        return conn

    @staticmethod
    def _apply_migrations(conn: sqlite3.Connection) -> list[str]:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)"
        )
        # BEGIN IMMEDIATE takes the write lock first, so two processes starting together migrate once.
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            applied = []
            for version, name, sql in _migrations():
                if version in done:
                    continue
                for statement in _split_sql(sql):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (version, name))
                applied.append(name)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return applied

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, self._connect)
            if self._migrate:
                await self.migrate()
            if self._path != ":memory:":
                self._readonly = await loop.run_in_executor(self._executor, self._connect_readonly)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: cannot open {self._path}: {exc}") from exc

    async def migrate(self) -> list[str]:
        return await self._run(self._apply_migrations)

    async def close(self) -> None:
        if self._executor is not None:
            for conn in (self._readonly, self._conn):
                if conn is not None:
                    await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._executor, self._conn, self._readonly = None, None, None

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    # -- keys -----------------------------------------------------------------------------------------

    async def insert_key(self, key: StoredKey) -> None:
        def go(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO signing_keys (kid, alg, state, created_at, retired_at, public_jwk, private_jwk)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key.kid,
                    key.alg,
                    key.state,
                    key.created_at,
                    key.retired_at,
                    key.public_jwk,
                    key.private_jwk,
                ),
            )

        await self._run(go)

    async def list_keys(self) -> list[StoredKey]:
        def go(c: sqlite3.Connection) -> list[StoredKey]:
            rows = c.execute(
                "SELECT kid, alg, state, created_at, retired_at, public_jwk, private_jwk"
                " FROM signing_keys ORDER BY created_at DESC, kid"
            ).fetchall()
            return [
                StoredKey(
                    kid=r[0],
                    alg=r[1],
                    state=r[2],
                    created_at=r[3],
                    retired_at=r[4],
                    public_jwk=r[5],
                    private_jwk=bytes(r[6]),
                )
                for r in rows
            ]

        return await self._run(go)

    async def activate_key(self, kid: str, now: float) -> None:
        def go(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")
            try:
                if c.execute("SELECT 1 FROM signing_keys WHERE kid = ?", (kid,)).fetchone() is None:
                    raise KeyError(kid)
                c.execute(
                    "UPDATE signing_keys SET state = 'retiring', retired_at = ?"
                    " WHERE state = 'active' AND kid <> ?",
                    (now, kid),
                )
                c.execute("UPDATE signing_keys SET state = 'active', retired_at = NULL WHERE kid = ?", (kid,))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

        await self._run(go)

    async def retire_keys(self, before: float) -> list[str]:
        def go(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "UPDATE signing_keys SET state = 'retired'"
                " WHERE state = 'retiring' AND retired_at < ? RETURNING kid",
                (before,),
            ).fetchall()
            return sorted(r[0] for r in rows)

        return await self._run(go)

    async def keys_version(self) -> int:
        def go(c: sqlite3.Connection) -> int:
            rows = c.execute("SELECT kid, state, retired_at FROM signing_keys ORDER BY kid").fetchall()
            return zlib.crc32(repr(rows).encode())

        return await self._run(go)

    async def watch_keys(
        self,
        on_change: Callable[[], Awaitable[None]],
        *,
        known_version: int | None = None,
        poll_interval: float = 2.0,
    ) -> None:
        # One file, usually one process: polling the key table is cheap and sees the CLI's rotations.
        last = known_version
        while True:
            try:
                version = await self.keys_version()
                if last is not None and version != last:
                    await on_change()
                last = version
            except Exception as exc:  # keep watching through outages and callback errors
                log.warning("key_watch_failed", error=exc.__class__.__name__)
            await asyncio.sleep(poll_interval)

    # -- audit ----------------------------------------------------------------------------------------

    async def append_audit(self, records: Sequence[AuditRecord]) -> None:
        rows = [
            (
                r.time,
                r.request_id,
                r.decision,
                r.client_id,
                r.issuer,
                r.sub,
                r.purpose,
                r.audience,
                r.error,
                r.denial,
                r.reason,
                r.jti,
                r.exp,
                r.actor,
                _rules_encoder.encode(r.rules).decode(),
            )
            for r in records
        ]

        def go(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany(_INSERT_AUDIT, rows)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

        await self._run(go)

    async def list_audit(self, *, limit: int = 100, before: float | None = None) -> list[AuditRecord]:
        def go(c: sqlite3.Connection) -> list[Any]:
            if before is None:
                return c.execute(
                    _SELECT_AUDIT + " ORDER BY time DESC, id DESC LIMIT ?",
                    (limit,),
                ).fetchall()
            return c.execute(
                _SELECT_AUDIT + " WHERE time < ? ORDER BY time DESC, id DESC LIMIT ?",
                (before, limit),
            ).fetchall()

        return [_audit_from_row(row) for row in await self._run(go)]

    # -- single use, rate limits ----------------------------------------------------------------------

    async def consume_jti(self, issuer: str, jti: str, expires_at: float) -> bool:
        def go(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "INSERT INTO replay_records (issuer, jti, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (issuer, jti) DO NOTHING",
                (issuer, jti, expires_at),
            )
            return cur.rowcount == 1

        return await self._run(go)

    async def increment_counter(self, key: str, window_start: int, expires_at: float) -> int:
        def go(c: sqlite3.Connection) -> int:
            row = c.execute(
                "INSERT INTO rate_counters (key, window_start, count, expires_at) VALUES (?, ?, 1, ?)"
                " ON CONFLICT (key, window_start) DO UPDATE SET count = count + 1 RETURNING count",
                (key, window_start, expires_at),
            ).fetchone()
            return int(row[0])

        return await self._run(go)

    async def purge_expired(self, now: float) -> int:
        def go(c: sqlite3.Connection) -> int:
            n = c.execute("DELETE FROM replay_records WHERE expires_at < ?", (now,)).rowcount
            return n + c.execute("DELETE FROM rate_counters WHERE expires_at < ?", (now,)).rowcount

        return await self._run(go)

    # -- python rules ---------------------------------------------------------------------------------

    async def rule_query(
        self, sql: str, params: Sequence[object], *, max_rows: int = 100
    ) -> list[Mapping[str, Any]]:
        readonly = self._readonly
        if readonly is None:
            raise StoreUnavailable("rule queries need a file-backed SQLite store")
        # `$1` is a valid named parameter in SQLite, so rules use one style for both backends.
        named = {str(i): value for i, value in enumerate(params, start=1)}

        def go(_: sqlite3.Connection) -> list[Mapping[str, Any]]:
            try:
                return [dict(row) for row in readonly.execute(sql, named).fetchmany(max_rows)]
            except sqlite3.Error as exc:  # the query was refused (bad SQL, a write): not an outage
                raise ValueError(f"rule query refused: {exc}") from None

        return await self._run(go)


def _audit_from_row(row: Any) -> AuditRecord:
    return AuditRecord(
        time=row[0],
        request_id=row[1],
        decision=row[2],
        client_id=row[3],
        issuer=row[4],
        sub=row[5],
        purpose=row[6],
        audience=row[7],
        error=row[8],
        denial=row[9],
        reason=row[10],
        jti=row[11],
        exp=row[12],
        actor=row[13],
        rules=_rules_decoder.decode(row[14]),
    )


def _split_sql(sql: str) -> list[str]:
    """Split a migration into statements; trigger bodies (BEGIN ... END;) stay whole."""
    statements: list[str] = []
    buffer: list[str] = []
    for line in sql.splitlines():
        if line.strip().startswith("--") and not buffer:
            continue
        buffer.append(line)
        candidate = "\n".join(buffer)
        if candidate.rstrip().endswith(";") and sqlite3.complete_statement(candidate):
            statements.append(candidate.strip())
            buffer = []
    if "".join(buffer).strip():
        statements.append("\n".join(buffer).strip())
    return statements
