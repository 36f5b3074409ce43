"""Red team: the audit writer now writes the decision lines of a committed batch itself
(exchange.audit._committed inside exchange.logging.batched_lines). A failing log stream (EPIPE from a
dead log shipper, BlockingIOError from a full non-blocking pipe, a closed stderr) must not kill the
writer: before b613ed6 the line was written by the request itself, so such a failure was that request's
error; now it is raised in the audit-writer task, which then never resolves its batch's callers nor any
later ones, and every exchange hangs."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import pytest
import structlog

from exchange.audit import Auditor
from exchange.logging import RequestLine, configure_logging
from exchange.store.base import Store
from schemas.records import AuditRecord

BOUND = 5  # seconds: far above a batch's in-process time; a hang is forever


class _Store:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    async def append_audit(self, records: Sequence[AuditRecord]) -> None:
        await asyncio.sleep(0)
        self.batches.append([r.request_id for r in records])


class _BrokenOnce(io.StringIO):
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
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], _BrokenOnce]]:
    saved = structlog.get_config()
    handlers = logging.getLogger().handlers[:]
    level = logging.getLogger().level

    def install() -> _BrokenOnce:
        broken = _BrokenOnce()
        monkeypatch.setattr(sys, "stderr", broken)
        configure_logging(json=True)
        return broken

    yield install
    structlog.configure(**saved)
    logging.getLogger().handlers[:] = handlers
    logging.getLogger().setLevel(level)


_line = RequestLine("exchange.audit", immediate=True)


def _record(rid: str) -> AuditRecord:
    return AuditRecord(time=1.0, request_id=rid, decision="granted")


async def test_a_failing_log_write_is_its_callers_error_and_the_writer_goes_on(
    stream: Callable[[], _BrokenOnce],
) -> None:
    broken = stream()
    store = _Store()
    auditor = Auditor(cast(Store, store))
    await auditor.start()

    def line() -> None:
        _line.info("token_issued", status=200)

    try:
        # The first batch's line cannot be written: its caller learns it (no answer without its line),
        # it does not wait forever.
        with pytest.raises(OSError):
            await asyncio.wait_for(auditor.record(_record("r-1"), line), BOUND)
        # The writer is still there for everyone else.
        await asyncio.wait_for(auditor.record(_record("r-2"), line), BOUND)
    finally:
        auditor._closing = True  # not stop(): on a dead writer it re-raises the task's error
        auditor._wake.set()
    assert store.batches == [["r-1"], ["r-2"]]
    assert broken.failed and broken.getvalue().count("token_issued") == 1  # r-2's line, once
