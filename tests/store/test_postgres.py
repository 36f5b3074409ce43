"""PostgreSQL-only behaviour: migrations, failure mapping and bounded time, key-change propagation."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import asyncpg
import pytest
from click.testing import CliRunner

from exchange.cli.db import db_group
from exchange.store import migrate as migrations
from exchange.store.base import MoveKey, StoreUnavailable
from exchange.store.postgres import PostgresStore
from schemas.config import StoreConfig
from schemas.records import AuditRecord, RuleOutcome, StoredKey

# How long a step that must not hang may take before the test calls it hung. Far above the timeouts
# configured here (0.5-1 s) and far below what the failure would take (forever, a 120 s sleep, a 600 s
# poll), so a loaded machine does not make it flaky: these tests assert bounds, never speed.
BOUND = 30

pytestmark = pytest.mark.postgres

T0 = 1_800_000_000.0


def key(kid: str, created_at: float = T0) -> StoredKey:
    return StoredKey(
        kid=kid, alg="ES256", state="previous", created_at=created_at, public_jwk="{}", private_jwk=b"sealed"
    )


def db_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(StoreConfig(url=pg_url, connect_timeout=2.0, command_timeout=2.0))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A loopback port that completes TCP handshakes and then never says a word: a hung server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestMigrations:
    """PostgreSQL-only migration behaviour; tests/store/test_migrations.py covers both backends."""

    async def test_a_replica_waits_out_a_long_migration_elsewhere_despite_short_timeouts(
        self, pg_url: str
    ) -> None:
        other = await asyncpg.connect(pg_url)
        store = PostgresStore(StoreConfig(url=pg_url, connect_timeout=0.5, command_timeout=0.5))
        try:
            async with other.transaction():
                # Another migrator holds the lock for longer than this replica's command timeout.
                await other.execute("SELECT pg_advisory_xact_lock($1)", migrations.MIGRATION_LOCK_ID)
                opening = asyncio.create_task(store.open())
                await asyncio.sleep(1.2)
                assert not opening.done()
            await opening  # lock released: it migrates and opens instead of timing out
            await store.ping()
        finally:
            await store.close()
            await other.close()


class TestDbCommands:
    def write_config(self, tmp_path: object, url: str) -> str:
        path = f"{tmp_path}/exchange.toml"
        with open(path, "w") as f:
            f.write(f'issuer = "http://127.0.0.1:8080"\n[store]\nurl = "{url}"\nconnect_timeout = 2.0\n')
        return path

    def test_migrate_then_status(self, pg_url: str, tmp_path: object) -> None:
        config = self.write_config(tmp_path, pg_url)
        runner = CliRunner()

        before = runner.invoke(db_group, ["status", "--config", config])
        first = runner.invoke(db_group, ["migrate", "--config", config])
        second = runner.invoke(db_group, ["migrate", "--config", config])
        after = runner.invoke(db_group, ["status", "--json", "--config", config])

        assert (before.exit_code, first.exit_code, second.exit_code, after.exit_code) == (0, 0, 0, 0)
        assert f"{len(migrations.migrations('postgres'))} pending" in before.output
        assert "applied 0001_init.sql" in first.output
        assert "nothing to apply" in second.output
        assert '"name":"0001_init.sql","applied":true' in after.output

    def test_migrate_against_a_dead_server_exits_1_with_one_sentence(self, tmp_path: object) -> None:
        config = self.write_config(tmp_path, f"postgresql://postgres@127.0.0.1:{closed_port()}/x")
        result = CliRunner().invoke(db_group, ["migrate", "--config", config])
        assert result.exit_code == 1
        assert result.output.startswith("error: the database is unavailable:")
        assert "Traceback" not in result.output

    def test_sqlite_migrate_opens_the_embedded_store(self, tmp_path: object) -> None:
        config = self.write_config(tmp_path, f"sqlite:///{tmp_path}/x.db")
        result = CliRunner().invoke(db_group, ["migrate", "--config", config])
        assert result.exit_code == 0, result.output
        assert f"sqlite: {len(migrations.migrations('sqlite'))} migration(s) applied" in result.output


class TestUnavailable:
    async def test_a_closed_port_fails_fast_with_store_unavailable(self) -> None:
        store = PostgresStore(
            StoreConfig(url=f"postgresql://postgres@127.0.0.1:{closed_port()}/x", connect_timeout=1.0)
        )
        with pytest.raises(StoreUnavailable, match="cannot connect"):
            await asyncio.wait_for(store.open(), BOUND)

    async def test_a_server_that_never_answers_times_out_within_the_connect_timeout(self) -> None:
        with silent_listener() as port:
            store = PostgresStore(
                StoreConfig(
                    url=f"postgresql://postgres@127.0.0.1:{port}/x", connect_timeout=0.5, command_timeout=0.5
                )
            )
            # Without the connect timeout this would wait on the silent peer forever.
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.open(), BOUND)

    async def test_calls_on_a_closed_store_raise_store_unavailable(self, pg_url: str) -> None:
        store = PostgresStore(StoreConfig(url=pg_url))
        with pytest.raises(StoreUnavailable, match="not open"):
            await store.ping()

    async def test_database_down_then_back_fails_bounded_then_recovers(
        self, pg_store: PostgresStore, pg_url: str, pg_server_dsn: str
    ) -> None:
        name = db_name(pg_url)
        admin = await asyncpg.connect(pg_server_dsn)
        try:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )

            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(pg_store.ping(), BOUND)
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(
                    pg_store.append_audit([AuditRecord(time=T0, request_id="r", decision="denied")]), BOUND
                )

            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await pg_store.ping()  # the pool reconnects by itself
            await pg_store.append_audit([AuditRecord(time=T0, request_id="r2", decision="denied")])
            assert [r.request_id for r in await pg_store.list_audit()] == ["r2"]
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await admin.close()

    async def test_a_statement_stuck_behind_a_lock_is_cut_off_by_the_command_timeout(
        self, pg_url: str
    ) -> None:
        store = PostgresStore(StoreConfig(url=pg_url, connect_timeout=1.0, command_timeout=0.5))
        await store.open()
        blocker = await asyncpg.connect(pg_url)
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("LOCK TABLE audit_records IN ACCESS EXCLUSIVE MODE")
            # Without the command timeout the insert would wait for the lock forever.
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(
                    store.append_audit([AuditRecord(time=T0, request_id="slow", decision="granted")]), BOUND
                )
            await tx.rollback()
            await store.ping()  # the cancelled connection did not poison the pool
        finally:
            await blocker.close()
            await store.close()


class TestAuditConnection:
    """The audit writer's batches go over one held connection (pgpool.Pool.held), not the pool."""

    async def test_a_held_connection_that_dies_fails_one_batch_then_is_replaced(
        self, pg_store: PostgresStore, pg_url: str
    ) -> None:
        await pg_store.append_audit([AuditRecord(time=T0, request_id="a", decision="granted")])
        admin = await asyncpg.connect(pg_url)
        try:
            # Every session but ours and the pool's idle one: the held connection, killed under the store.
            held = await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
                " AND query LIKE '%INSERT INTO audit_records%'",
                db_name(pg_url),
            )
            assert len(held) == 1
            await admin.execute("SELECT pg_terminate_backend($1)", held[0]["pid"])
        finally:
            await admin.close()
        try:
            await asyncio.wait_for(
                pg_store.append_audit([AuditRecord(time=T0, request_id="b", decision="granted")]), BOUND
            )
        except StoreUnavailable:
            pass  # the batch on the dead connection is not committed, and says so
        await pg_store.append_audit([AuditRecord(time=T0, request_id="c", decision="granted")])
        ids = [r.request_id for r in await pg_store.export_audit()]
        assert ids in (["a", "c"], ["a", "b", "c"])

    async def test_batches_at_the_same_time_all_commit(self, pg_store: PostgresStore) -> None:
        # The held connection runs one statement at a time: a batch arriving meanwhile takes the pool.
        await asyncio.gather(
            *(
                pg_store.append_audit([AuditRecord(time=T0, request_id=f"r{n}", decision="granted")])
                for n in range(8)
            )
        )
        assert sorted(r.request_id for r in await pg_store.export_audit()) == [f"r{n}" for n in range(8)]


class TestAuditOrder:
    async def test_a_batch_that_waits_on_another_gets_a_later_seq_than_everything_committed_before_it(
        self, pg_store: PostgresStore, pg_url: str
    ) -> None:
        # Another replica's batch is mid-transaction when ours arrives. Were seqs handed out at insert
        # time, ours would take the next one and a follower could read it before the other commits,
        # then never see the other's lower seq. The trail's lock makes ours wait and number after it.
        other = await asyncpg.connect(pg_url)
        try:
            tx = other.transaction()
            await tx.start()
            insert = "INSERT INTO audit_records (time, request_id, decision) VALUES ($1, $2, 'granted')"
            await other.execute(insert, T0, "other-1")
            ours = asyncio.create_task(
                pg_store.append_audit([AuditRecord(time=T0, request_id="ours", decision="granted")])
            )
            await wait_until_blocked_on_a_lock(pg_url, application_name="purpose-exchange")
            await other.execute(insert, T0, "other-2")  # after ours started: still numbered before it
            assert await pg_store.export_audit() == []  # nothing is visible until a commit
            await tx.commit()
            await ours
        finally:
            await other.close()

        exported = await pg_store.export_audit()
        assert [r.request_id for r in exported] == ["other-1", "other-2", "ours"]
        assert [r.seq for r in exported] == sorted(r.seq for r in exported)  # type: ignore[type-var]


async def wait_until_blocked_on_a_lock(url: str, *, application_name: str) -> None:
    """Return once a session of `application_name` is waiting for a lock (a guard, not a timing).

    Asked on a connection of its own, outside any transaction: inside one, pg_stat_activity lists the
    sessions of the transaction's first look at it, and a session that connected later never shows.
    """
    conn = await asyncpg.connect(url)
    try:
        for _ in range(200):
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = $1 AND wait_event_type = 'Lock'",
                application_name,
            )
            if waiting:
                return
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise AssertionError(f"no {application_name} session ever waited for a lock")


class TestIntegrity:
    async def test_a_duplicate_kid_is_a_value_error_not_an_outage(self, pg_store: PostgresStore) -> None:
        await pg_store.insert_key(key("k"))
        with pytest.raises(ValueError, match="'k' conflicts"):
            await pg_store.insert_key(key("k"))

    async def test_the_database_refuses_to_edit_audit_records(
        self, pg_store: PostgresStore, pg_url: str
    ) -> None:
        await pg_store.append_audit([AuditRecord(time=T0, request_id="r", decision="granted", jti="j")])
        conn = await asyncpg.connect(pg_url)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute("UPDATE audit_records SET decision = 'denied'")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute("DELETE FROM audit_records")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute("TRUNCATE audit_records")
        finally:
            await conn.close()
        assert len(await pg_store.list_audit()) == 1

    async def test_hostile_text_is_stored_as_data(self, pg_store: PostgresStore) -> None:
        sub = "alice'); DROP TABLE audit_records; --\x00"
        await pg_store.append_audit([AuditRecord(time=T0, request_id="r", decision="denied", sub=sub)])
        [record] = await pg_store.list_audit()
        # NUL cannot live in PostgreSQL text: it is replaced, so the denial is still audited.
        assert record.sub == "alice'); DROP TABLE audit_records; --\ufffd"

    async def test_a_nul_anywhere_in_a_batch_is_replaced_and_the_rest_kept_exact(
        self, pg_store: PostgresStore
    ) -> None:
        # The batch travels as one JSON text: NUL in a rule's code too, a spelled-out "\\u0000" kept.
        spelled = "back\\slash \\u0000 \u00e9 \u2028 \t"
        hostile = AuditRecord(
            time=T0, request_id="r1", decision="denied", client_id=spelled,
            rules=[RuleOutcome(rule="python a\x00b", outcome="deny", code="c\x00")],
        )  # fmt: skip
        plain = AuditRecord(time=T0 + 0.000001, request_id="r2", decision="granted", exp=2**40)
        await pg_store.append_audit([hostile, plain])
        first, second = sorted(await pg_store.list_audit(), key=lambda r: r.seq or 0)
        assert first.client_id == spelled
        assert first.rules == [RuleOutcome(rule="python a\ufffdb", outcome="deny", code="c\ufffd")]
        assert (second.time, second.exp, second.rules) == (T0 + 0.000001, 2**40, [])


class TestKeyWatch:
    async def test_keys_version_moves_on_every_committed_key_change(self, pg_store: PostgresStore) -> None:
        v0 = await pg_store.keys_version()
        await pg_store.insert_key(key("a"))
        v1 = await pg_store.keys_version()
        await pg_store.change_keys(lambda _: [MoveKey("a", "previous", "current", T0)])
        v2 = await pg_store.keys_version()
        assert v0 < v1 < v2
        await pg_store.list_keys()
        assert await pg_store.keys_version() == v2  # reads do not count

    async def test_another_replica_sees_a_rotation_by_notification_well_before_its_poll(
        self, pg_store: PostgresStore, pg_url: str
    ) -> None:
        changed = asyncio.Event()

        async def on_change() -> None:
            changed.set()

        watcher = PostgresStore(StoreConfig(url=pg_url))
        await watcher.open()
        # A long poll interval: only NOTIFY can explain a quick wake-up.
        task = asyncio.create_task(
            watcher.watch_keys(on_change, known_version=await watcher.keys_version(), poll_interval=600)
        )
        try:
            await asyncio.sleep(0.3)  # let it subscribe
            await pg_store.insert_key(key("new"))
            await asyncio.wait_for(changed.wait(), BOUND)  # far shorter than the poll interval
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await watcher.close()

    async def test_a_change_missed_while_not_listening_is_reported_on_start(
        self, pg_store: PostgresStore
    ) -> None:
        known = await pg_store.keys_version()
        await pg_store.insert_key(key("while-away"))
        calls = 0

        async def on_change() -> None:
            nonlocal calls
            calls += 1

        task = asyncio.create_task(pg_store.watch_keys(on_change, known_version=known, poll_interval=600))
        try:
            for _ in range(50):
                if calls:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert calls == 1

    async def test_the_watcher_reconnects_after_losing_its_connection(
        self, pg_store: PostgresStore, pg_url: str, pg_server_dsn: str
    ) -> None:
        seen: list[int] = []

        async def on_change() -> None:
            seen.append(await pg_store.keys_version())

        task = asyncio.create_task(
            pg_store.watch_keys(on_change, known_version=await pg_store.keys_version(), poll_interval=0.2)
        )
        admin = await asyncpg.connect(pg_server_dsn)
        try:
            await asyncio.sleep(0.3)
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = $1 AND application_name = 'purpose-exchange-keywatch'",
                db_name(pg_url),
            )
            assert killed == 1
            await pg_store.insert_key(key("after-reconnect"))
            for _ in range(50):
                if seen:
                    break
                await asyncio.sleep(0.1)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await admin.close()
        assert seen, "no change reported after the watcher's connection was killed"

    async def test_a_failing_callback_does_not_stop_the_watcher(self, pg_store: PostgresStore) -> None:
        calls = 0

        async def on_change() -> None:
            nonlocal calls
            calls += 1
            raise RuntimeError("refresh broke")

        task = asyncio.create_task(
            pg_store.watch_keys(on_change, known_version=await pg_store.keys_version(), poll_interval=0.1)
        )
        try:
            await asyncio.sleep(0.2)
            await pg_store.insert_key(key("one"))
            await asyncio.sleep(0.4)
            await pg_store.insert_key(key("two"))
            for _ in range(50):
                if calls >= 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert calls == 2


class TestRuleQuery:
    async def test_a_write_is_refused_as_the_rules_own_error(self, pg_store: PostgresStore) -> None:
        with pytest.raises(ValueError, match=r"SQLSTATE 25006"):  # read_only_sql_transaction
            await pg_store.rule_query("INSERT INTO replay_records VALUES ($1, $2, $3)", ["i", "j", T0])
        assert await pg_store.consume_jti("i", "j", T0) is True  # nothing was written

    async def test_a_bad_query_is_a_value_error_not_an_outage(self, pg_store: PostgresStore) -> None:
        with pytest.raises(ValueError, match=r"SQLSTATE 42P01"):  # undefined_table
            await pg_store.rule_query("SELECT * FROM no_such_table", [])

    async def test_a_slow_query_is_cut_off_and_reported_unavailable(self, pg_url: str) -> None:
        store = PostgresStore(StoreConfig(url=pg_url, command_timeout=0.5))
        await store.open()
        try:
            with pytest.raises(StoreUnavailable):  # the sleep outlasts BOUND: only the timeout ends it
                await asyncio.wait_for(store.rule_query("SELECT pg_sleep(120)", []), BOUND)
            await store.ping()
        finally:
            await store.close()
