"""The audit writer's group commit, in process: what runs once a batch is committed, and when callers
resume (the HTTP view of it is in test_postgres_app.py)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import pytest
import structlog

from exchange.audit import Auditor
from exchange.logging import RequestLine, configure_logging
from exchange.store.base import Store, StoreUnavailable
from schemas.records import AuditRecord


class _Store:
    """append_audit only: takes a loop turn like a real write, fails when told to."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.down = False

    async def append_audit(self, records: Sequence[AuditRecord]) -> None:
        await asyncio.sleep(0)
        if self.down:
            raise StoreUnavailable("postgresql: down")
        self.batches.append([r.request_id for r in records])


class _Writes(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


class _BrokenOnce(_Writes):
    """A stream whose first write fails as a pipe whose reader went away does."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def write(self, text: str) -> int:
        if not self.failed:
            self.failed = True
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    saved = structlog.get_config()
    handlers = logging.getLogger().handlers[:]
    level = logging.getLogger().level

    def install(kind: type[_Writes] = _Writes) -> Any:
        # In the test itself: pytest puts its own capture back on sys.stderr after the fixtures' setup.
        writes = kind()
        monkeypatch.setattr(sys, "stderr", writes)
        configure_logging(json=True)
        return writes

    yield install
    structlog.configure(**saved)
    logging.getLogger().handlers[:] = handlers
    logging.getLogger().setLevel(level)


_line = RequestLine("exchange.audit", immediate=True)


def _record(rid: str) -> AuditRecord:
    return AuditRecord(time=1.0, request_id=rid, decision="granted")


async def _caller(
    auditor: Auditor, rid: str, seen: dict[str, list[str]], committed: Callable[[], None] | None = None
) -> None:
    structlog.contextvars.bind_contextvars(request_id=rid)  # this task's context only

    def line() -> None:
        _line.info("token_issued", status=200)

    await auditor.record(_record(rid), committed or line)
    # What is in the stream when this caller resumes (when it would send its answer).
    seen[rid] = [json.loads(x)["request_id"] for x in cast(_Writes, sys.stderr).getvalue().splitlines()]


class TestCommitted:
    async def test_a_batch_lines_leave_in_one_write_before_any_of_its_callers_resumes(
        self, stream: Callable[[], _Writes]
    ) -> None:
        writes = stream()
        store = _Store()
        auditor = Auditor(cast(Store, store))
        await auditor.start()
        seen: dict[str, list[str]] = {}
        try:
            await asyncio.gather(*(_caller(auditor, f"r-{n}", seen) for n in range(3)))
        finally:
            await auditor.stop()
        assert store.batches == [["r-0", "r-1", "r-2"]]
        # One write, each line in its own caller's context, all of them there for every caller.
        assert len(writes.calls) == 1
        assert seen == {rid: ["r-0", "r-1", "r-2"] for rid in ("r-0", "r-1", "r-2")}

    async def test_nothing_runs_for_a_batch_that_is_not_committed(
        self, stream: Callable[[], _Writes]
    ) -> None:
        writes = stream()
        store = _Store()
        store.down = True
        auditor = Auditor(cast(Store, store))
        await auditor.start()
        ran: list[str] = []
        try:
            with pytest.raises(StoreUnavailable, match="down"):
                await auditor.record(_record("r-1"), lambda: ran.append("r-1"))
        finally:
            await auditor.stop()
        assert ran == []
        assert "token_issued" not in writes.getvalue()

    async def test_what_a_callback_raises_its_caller_raises_and_the_others_go_on(
        self, stream: Callable[[], _Writes]
    ) -> None:
        stream()
        auditor = Auditor(cast(Store, _Store()))
        await auditor.start()
        seen: dict[str, list[str]] = {}

        def broken() -> None:
            raise TypeError("cannot encode")

        try:
            results: list[Any] = await asyncio.gather(
                _caller(auditor, "r-0", seen),
                _caller(auditor, "r-1", seen, broken),
                _caller(auditor, "r-2", seen),
                return_exceptions=True,
            )
        finally:
            await auditor.stop()
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], TypeError)
        assert seen == {"r-0": ["r-0", "r-2"], "r-2": ["r-0", "r-2"]}


async def test_a_failing_log_write_is_its_callers_error_and_the_writer_goes_on(
    stream: Callable[..., Any],
) -> None:
    # A dead log shipper (EPIPE) must not kill the writer: each caller with a line raises, the rest go on.
    broken = stream(_BrokenOnce)
    store = _Store()
    auditor = Auditor(cast(Store, store))
    await auditor.start()

    def line() -> None:
        _line.info("token_issued", status=200)

    try:
        # The first batch's line cannot be written: its caller learns it (no answer without its line),
        # it does not wait forever.
        with pytest.raises(OSError):
            await asyncio.wait_for(auditor.record(_record("r-1"), line), 5)
        # The writer is still there for everyone else.
        await asyncio.wait_for(auditor.record(_record("r-2"), line), 5)
    finally:
        auditor._closing = True  # not stop(): on a dead writer it re-raises the task's error
        auditor._wake.set()
    assert store.batches == [["r-1"], ["r-2"]]
    assert broken.failed and broken.getvalue().count("token_issued") == 1  # r-2's line, once
