"""The Store contract, run unchanged against SQLite and PostgreSQL (see conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
import pytest

from exchange.store import Store, StoreUnavailable, open_store
from exchange.store.base import AddKey, AuditFilter, KeyChange, KeyConflict, MoveKey, RewrapKey
from schemas.config import StoreConfig
from schemas.records import AuditRecord, DenialCount, RuleOutcome, StoredKey

T0 = 1_800_000_000.0


def make_key(kid: str, *, state: str = "previous", created_at: float = T0) -> StoredKey:
    return StoredKey(
        kid=kid,
        alg="ES256",
        state=state,  # type: ignore[arg-type]
        created_at=created_at,
        activated_at=created_at if state == "current" else None,
        public_jwk=f'{{"kty":"EC","kid":"{kid}"}}',
        # Bytes that are not valid UTF-8 (and hold a NUL): ciphertext must round-trip exactly.
        private_jwk=None if state == "retired" else b"\x00\xff\xfe" + kid.encode(),
        kek_id="kek-1",
    )


def add(*keys: StoredKey) -> Callable[[list[StoredKey]], list[KeyChange]]:
    return lambda _: [AddKey(k) for k in keys]


def make_record(n: int, *, time: float = T0, decision: str = "granted", **extra: object) -> AuditRecord:
    return AuditRecord(
        time=time,
        request_id=f"req-{n}",
        decision=decision,  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )


async def test_ping_answers_on_an_open_store(store: Store) -> None:
    await store.ping()


class TestKeys:
    async def test_inserted_keys_round_trip_newest_first(self, store: Store) -> None:
        await store.insert_key(make_key("old", state="current", created_at=T0))
        await store.insert_key(make_key("new", state="next", created_at=T0 + 10))

        keys = await store.list_keys()

        assert [k.kid for k in keys] == ["new", "old"]
        assert keys[0].private_jwk == b"\x00\xff\xfenew"
        assert keys[0].public_jwk == '{"kty":"EC","kid":"new"}'
        assert (keys[0].alg, keys[0].state, keys[0].created_at, keys[0].kek_id, keys[0].revoked) == (
            "ES256",
            "next",
            T0 + 10,
            "kek-1",
            False,
        )
        assert (keys[1].activated_at, keys[1].deactivated_at, keys[1].retired_at) == (T0, None, None)

    async def test_list_keys_is_empty_on_a_fresh_store(self, store: Store) -> None:
        assert await store.list_keys() == []

    async def test_a_plan_sees_the_stored_keys_and_its_changes_are_applied_in_order(
        self, store: Store
    ) -> None:
        await store.change_keys(add(make_key("a", state="current"), make_key("b", state="next")))
        seen: list[list[str]] = []

        def promote(keys: list[StoredKey]) -> list[KeyChange]:
            seen.append(sorted(k.kid for k in keys))
            return [MoveKey("a", "current", "previous", T0 + 100), MoveKey("b", "next", "current", T0 + 100)]

        applied = await store.change_keys(promote)

        assert seen == [["a", "b"]] and len(applied) == 2
        keys = {k.kid: k for k in await store.list_keys()}
        assert (keys["a"].state, keys["a"].deactivated_at) == ("previous", T0 + 100)
        assert (keys["b"].state, keys["b"].activated_at) == ("current", T0 + 100)

    async def test_retiring_a_key_destroys_its_private_half(self, store: Store) -> None:
        await store.change_keys(add(make_key("a", state="current"), make_key("b", state="next")))
        await store.change_keys(lambda _: [MoveKey("b", "next", "retired", T0 + 5, revoked=True)])
        [b] = [k for k in await store.list_keys() if k.kid == "b"]
        assert (b.state, b.private_jwk, b.retired_at, b.revoked, b.deactivated_at) == (
            "retired",
            None,
            T0 + 5,
            True,
            None,
        )

    async def test_a_move_from_a_state_the_key_is_not_in_changes_nothing(self, store: Store) -> None:
        await store.change_keys(add(make_key("a", state="current"), make_key("b", state="next")))
        with pytest.raises(KeyConflict):
            await store.change_keys(
                lambda _: [MoveKey("b", "next", "current", T0), MoveKey("a", "previous", "retired", T0)]
            )
        states = {k.kid: k.state for k in await store.list_keys()}
        assert states == {"a": "current", "b": "next"}  # the first move was rolled back with the second

    async def test_a_second_current_or_next_key_is_refused_by_the_database(self, store: Store) -> None:
        await store.change_keys(add(make_key("a", state="current"), make_key("b", state="next")))
        for state in ("current", "next"):
            with pytest.raises(KeyConflict):
                await store.change_keys(add(make_key(f"x-{state}", state=state)))
        assert sorted(k.kid for k in await store.list_keys()) == ["a", "b"]

    async def test_what_a_plan_raises_rolls_back_and_propagates(self, store: Store) -> None:
        def refuse(keys: list[StoredKey]) -> list[KeyChange]:
            raise LookupError("no")

        await store.change_keys(add(make_key("a", state="current")))
        with pytest.raises(LookupError):
            await store.change_keys(refuse)
        assert [k.state for k in await store.list_keys()] == ["current"]

    async def test_rewrap_replaces_the_ciphertext_it_read(self, store: Store) -> None:
        await store.change_keys(add(make_key("a", state="current")))
        [a] = await store.list_keys()
        assert a.private_jwk is not None
        await store.change_keys(lambda _: [RewrapKey("a", b"new", "kek-2", was=a.private_jwk)])
        [a] = await store.list_keys()
        assert (a.private_jwk, a.kek_id) == (b"new", "kek-2")
        with pytest.raises(KeyConflict):  # planned on the old ciphertext, which is gone
            await store.change_keys(lambda _: [RewrapKey("a", b"newer", "kek-3", was=b"\x00\xff\xfea")])

    async def test_concurrent_plans_serialise_so_only_one_stages_a_key(self, store: Store) -> None:
        await store.change_keys(add(make_key("a", state="current")))

        def stage(kid: str) -> Callable[[list[StoredKey]], list[KeyChange]]:
            def plan(keys: list[StoredKey]) -> list[KeyChange]:
                return [] if any(k.state == "next" for k in keys) else [AddKey(make_key(kid, state="next"))]

            return plan

        results = await asyncio.gather(*(store.change_keys(stage(f"n{i}")) for i in range(6)))

        assert sorted(len(r) for r in results) == [0, 0, 0, 0, 0, 1]
        assert [k.state for k in await store.list_keys()].count("next") == 1


class TestKeyWatch:
    async def test_keys_version_changes_with_every_key_change(self, store: Store) -> None:
        v0 = await store.keys_version()
        await store.change_keys(add(make_key("a", state="current"), make_key("b", state="next")))
        v1 = await store.keys_version()
        await store.change_keys(
            lambda _: [MoveKey("a", "current", "previous", T0), MoveKey("b", "next", "current", T0)]
        )
        v2 = await store.keys_version()
        assert len({v0, v1, v2}) == 3
        assert await store.keys_version() == v2

    async def test_watch_keys_reports_a_rotation_made_elsewhere(
        self, store: Store, store_config: Callable[..., StoreConfig]
    ) -> None:
        seen = asyncio.Event()

        async def on_change() -> None:
            seen.set()

        watcher = asyncio.create_task(
            store.watch_keys(on_change, known_version=await store.keys_version(), poll_interval=0.1)
        )
        other = await open_store(store_config())  # another process's view of the same database
        try:
            await other.change_keys(add(make_key("rotated")))
            await asyncio.wait_for(seen.wait(), 5)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await other.close()

    async def test_duplicate_kid_is_a_value_error(self, store: Store) -> None:
        await store.insert_key(make_key("dup"))
        with pytest.raises(ValueError):
            await store.insert_key(make_key("dup"))


def written(records: list[AuditRecord]) -> list[AuditRecord]:
    """Records as they were handed to the store (read back, they also carry their seq)."""
    return [msgspec.structs.replace(r, seq=None) for r in records]


class TestAudit:
    async def test_a_batch_round_trips_every_field(self, store: Store) -> None:
        full = make_record(
            1,
            client_id="bank-web",
            issuer="https://idp.example",
            sub="alice",
            purpose="payments.approve",
            audience="https://payments.internal",
            reason="ok",
            jti="jti-1",
            exp=1_800_000_060,
            actor="svc",
            txn="97053963-771d-49cc-a4e3-20aad399c312",
            rules=[
                RuleOutcome(rule="claim", outcome="allow"),
                RuleOutcome(rule="claim", outcome="deny", code="mfa"),
            ],
        )
        denied = make_record(
            2, time=T0 + 1, decision="denied", error="invalid_request", denial="mfa_required"
        )

        await store.append_audit([full, denied])

        listed = await store.list_audit()
        assert written(listed) == [denied, full]
        assert listed[0].seq is not None and listed[1].seq is not None and listed[0].seq > listed[1].seq

    async def test_listing_is_newest_committed_first_and_batch_order_is_kept(self, store: Store) -> None:
        await store.append_audit([make_record(1, time=T0), make_record(2, time=T0 + 2)])
        await store.append_audit([make_record(3, time=T0 + 1), make_record(4, time=T0 + 1)])

        listed = await store.list_audit()

        # The trail's order is commit order (seq), whatever the records' own times say.
        assert [r.request_id for r in listed] == ["req-4", "req-3", "req-2", "req-1"]
        assert [r.seq for r in listed] == sorted((r.seq for r in listed), reverse=True)

    async def test_before_pages_through_the_trail_without_losing_records_of_the_same_second(
        self, store: Store
    ) -> None:
        # Ten records in the same second: paging by time would lose or repeat some, paging by seq cannot.
        await store.append_audit([make_record(i, time=T0) for i in range(10)])

        first = await store.list_audit(limit=4)
        second = await store.list_audit(limit=4, before=first[-1].seq)
        third = await store.list_audit(limit=4, before=second[-1].seq)

        pages = [r.request_id for r in first + second + third]
        assert pages == [f"req-{i}" for i in range(9, -1, -1)]

    async def test_every_filter_matches_exactly_and_filters_combine(self, store: Store) -> None:
        await store.append_audit(
            [
                make_record(1, sub="alice", client_id="web", purpose="pay", jti="j1", txn="t1"),
                make_record(2, sub="bob", client_id="web", purpose="pay", decision="denied", denial="mfa"),
                make_record(3, sub="alice", client_id="batch", purpose="export", decision="denied"),
                make_record(4, sub="alice%", client_id="web", purpose="pay"),  # LIKE wildcards are data
            ]
        )

        async def ids(**where: object) -> list[str]:
            return [r.request_id for r in await store.list_audit(AuditFilter(**where))]  # type: ignore[arg-type]

        assert await ids(sub="alice") == ["req-3", "req-1"]
        assert await ids(client_id="web") == ["req-4", "req-2", "req-1"]
        assert await ids(purpose="export") == ["req-3"]
        assert await ids(decision="denied") == ["req-3", "req-2"]
        assert await ids(denial="mfa") == ["req-2"]
        assert await ids(request_id="req-4") == ["req-4"]
        assert await ids(jti="j1") == ["req-1"]
        assert await ids(txn="t1") == ["req-1"]
        assert await ids(sub="alice", client_id="web") == ["req-1"]
        assert await ids(sub="alice'; --") == []

    async def test_since_is_inclusive_and_until_exclusive(self, store: Store) -> None:
        await store.append_audit([make_record(i, time=T0 + i) for i in range(5)])

        listed = await store.list_audit(AuditFilter(since=T0 + 1, until=T0 + 3))

        assert [r.request_id for r in listed] == ["req-2", "req-1"]

    async def test_export_follows_the_trail_in_commit_order_from_a_cursor(self, store: Store) -> None:
        await store.append_audit([make_record(i, time=T0 - i) for i in range(3)])
        first = await store.export_audit(after=0, limit=2)
        await store.append_audit([make_record(3), make_record(4)])

        rest = await store.export_audit(after=first[-1].seq or 0)
        again = await store.export_audit(after=rest[-1].seq or 0)

        assert [r.request_id for r in first + rest] == [f"req-{i}" for i in range(5)]
        assert again == []

    async def test_counts_group_by_decision_error_and_denial(self, store: Store) -> None:
        await store.append_audit(
            [
                make_record(1),
                make_record(2),
                make_record(3, decision="denied", error="invalid_request", denial="mfa_required"),
                make_record(4, decision="denied", error="invalid_client", time=T0 + 100),
            ]
        )

        counts = await store.count_audit()
        recent = await store.count_audit(AuditFilter(since=T0 + 50))

        assert [(c.decision, c.error, c.denial, c.count) for c in counts] == [
            ("granted", None, None, 2),
            ("denied", "invalid_client", None, 1),
            ("denied", "invalid_request", "mfa_required", 1),
        ]
        assert [(c.decision, c.count) for c in recent] == [("denied", 1)]

    async def test_an_empty_batch_is_a_no_op(self, store: Store) -> None:
        await store.append_audit([])
        assert await store.list_audit() == []

    async def test_a_failing_batch_commits_none_of_its_records(self, store: Store) -> None:
        good = make_record(1)
        # Neither database can store an exp beyond 64-bit integers, so the second record fails after
        # the first was handed over: the batch must still commit as a whole or not at all.
        bad = make_record(2, exp=2**70)
        # A caller's bad data is a programming error, not an outage: never StoreUnavailable.
        with pytest.raises((OverflowError, ValueError)):
            await store.append_audit([good, bad])

        assert await store.list_audit() == []

    async def test_concurrent_batches_all_land_with_distinct_increasing_seqs(self, store: Store) -> None:
        await asyncio.gather(
            *(
                store.append_audit([make_record(b * 10 + i, time=T0 + b) for i in range(10)])
                for b in range(10)
            )
        )
        exported = await store.export_audit(limit=1000)
        assert len(exported) == 100
        seqs = [r.seq for r in exported]
        assert len(set(seqs)) == 100 and seqs == sorted(seqs)  # type: ignore[type-var]
        # Each batch is contiguous in the trail: its records committed together, in batch order.
        for b in range(10):
            ids = [r.request_id for r in exported if int(r.request_id[4:]) // 10 == b]
            assert ids == [f"req-{b * 10 + i}" for i in range(10)]


class TestSingleUse:
    async def test_a_jti_is_consumed_once(self, store: Store) -> None:
        assert await store.consume_jti("iss", "j1", T0 + 60) is True
        assert await store.consume_jti("iss", "j1", T0 + 60) is False
        assert await store.consume_jti("iss", "j1", T0 + 60) is False

    async def test_the_same_jti_from_another_issuer_is_distinct(self, store: Store) -> None:
        assert await store.consume_jti("iss-a", "j1", T0 + 60) is True
        assert await store.consume_jti("iss-b", "j1", T0 + 60) is True

    async def test_concurrent_consumers_of_one_jti_see_exactly_one_true(self, store: Store) -> None:
        results = await asyncio.gather(*(store.consume_jti("iss", "race", T0 + 60) for _ in range(20)))
        assert results.count(True) == 1

    async def test_a_purged_jti_can_be_recorded_again(self, store: Store) -> None:
        await store.consume_jti("iss", "j1", T0)
        assert await store.purge_expired(T0 + 1) == 1
        assert await store.consume_jti("iss", "j1", T0 + 60) is True


class TestCounters:
    async def test_increments_count_per_key_and_window(self, store: Store) -> None:
        assert [await store.increment_counter("c1", 100, T0 + 60) for _ in range(3)] == [1, 2, 3]
        assert await store.increment_counter("c1", 160, T0 + 120) == 1  # next window starts afresh
        assert await store.increment_counter("c2", 100, T0 + 60) == 1  # another key

    async def test_concurrent_increments_give_exact_counts(self, store: Store) -> None:
        counts = await asyncio.gather(*(store.increment_counter("hot", 100, T0 + 60) for _ in range(50)))
        assert sorted(counts) == list(range(1, 51))
        assert await store.increment_counter("hot", 100, T0 + 60) == 51


class TestPurge:
    async def test_purge_drops_only_expired_replays_and_counters(self, store: Store) -> None:
        await store.consume_jti("iss", "old", T0 + 10)
        await store.consume_jti("iss", "live", T0 + 1000)
        await store.increment_counter("old", 0, T0 + 10)
        await store.increment_counter("live", 0, T0 + 1000)

        assert await store.purge_expired(T0 + 100) == 2

        assert await store.consume_jti("iss", "live", T0 + 1000) is False  # still remembered
        assert await store.consume_jti("iss", "old", T0 + 1000) is True  # forgotten, recorded anew
        assert await store.increment_counter("live", 0, T0 + 1000) == 2
        assert await store.increment_counter("old", 0, T0 + 1000) == 1
        assert await store.purge_expired(T0 + 100) == 0

    async def test_purge_never_touches_the_audit_trail_or_keys(self, store: Store) -> None:
        await store.append_audit([make_record(1, time=T0 - 10_000)])
        await store.insert_key(make_key("k", created_at=T0 - 10_000))

        await store.purge_expired(T0 + 10_000)

        assert len(await store.list_audit()) == 1
        assert len(await store.list_keys()) == 1


class TestRetention:
    async def test_purge_audit_deletes_old_records_in_batches_and_the_store_refuses_fresh_ones(
        self, store: Store
    ) -> None:
        import time as clock

        now = clock.time()
        old = [make_record(n, time=now - 40 * 86400) for n in range(5)]
        await store.append_audit([*old, make_record(9, time=now - 60)])
        assert await store.purge_audit(now - 30 * 86400, batch=2) == 2  # at most a batch at a time
        assert await store.purge_audit(now - 30 * 86400, batch=10) == 3
        assert [r.request_id for r in await store.list_audit()] == ["req-9"]
        # A cutoff that would reach a fresh record: the database refuses, nothing is deleted.
        with pytest.raises(Exception, match="append-only"):
            await store.purge_audit(now + 1)
        assert [r.request_id for r in await store.list_audit()] == ["req-9"]


class TestDenialCounts:
    def count(self, window_start: int, n: int, client_id: str | None = "ghost") -> DenialCount:
        return DenialCount(
            window_start=window_start,
            window_seconds=60,
            reason="unknown_client",
            error="invalid_client",
            client_id=client_id,
            source=None,
            count=n,
        )

    async def test_counts_of_one_key_and_window_add_up_across_writers(self, store: Store) -> None:
        w = int(T0)
        await store.add_denial_counts([self.count(w, 3), self.count(w, 1, client_id=None)])
        await store.add_denial_counts([self.count(w, 4), self.count(w + 60, 2)])  # another worker
        listed = await store.list_denial_counts(since=w)
        assert [(c.window_start, c.client_id, c.count) for c in listed] == [
            (w + 60, "ghost", 2),
            (w, "ghost", 7),
            (w, None, 1),
        ]
        assert [c.window_start for c in await store.list_denial_counts(since=w + 1)] == [w + 60]

    async def test_purge_audit_drops_counts_of_windows_before_the_cutoff(self, store: Store) -> None:
        await store.add_denial_counts([self.count(int(T0), 3), self.count(int(T0) + 60, 1)])
        assert await store.purge_audit(T0 + 30) == 1
        assert [c.count for c in await store.list_denial_counts()] == [1]


class TestRuleQuery:
    async def test_reads_rows_with_dollar_parameters(self, store: Store) -> None:
        await store.insert_key(make_key("a", created_at=T0))
        await store.insert_key(make_key("b", created_at=T0 + 1))

        rows = await store.rule_query("SELECT kid, alg FROM signing_keys WHERE kid <> $1 ORDER BY kid", ["b"])

        assert [dict(r) for r in rows] == [{"kid": "a", "alg": "ES256"}]

    async def test_returns_at_most_max_rows(self, store: Store) -> None:
        for i in range(5):
            await store.insert_key(make_key(f"k{i}", created_at=T0 + i))
        rows = await store.rule_query("SELECT kid FROM signing_keys ORDER BY kid", [], max_rows=2)
        assert [r["kid"] for r in rows] == ["k0", "k1"]

    async def test_a_hostile_parameter_is_only_data(self, store: Store) -> None:
        await store.insert_key(make_key("a"))
        rows = await store.rule_query(
            "SELECT count(*) AS n FROM signing_keys WHERE kid = $1", ["x' OR '1'='1"]
        )
        assert rows[0]["n"] == 0

    async def test_a_rule_query_cannot_write(self, store: Store) -> None:
        await store.insert_key(make_key("a"))
        # The error type differs by backend (a refused write is not an outage on PostgreSQL); the
        # contract is that the write is refused and nothing changes.
        with pytest.raises((ValueError, StoreUnavailable)):
            await store.rule_query("DELETE FROM signing_keys WHERE kid = $1", ["a"])
        assert [k.kid for k in await store.list_keys()] == ["a"]
