"""The audit trail: every decision is one committed store record (and, from the exchange, one log line),
except the refusals of callers that never authenticated, which are counted (`DenialTally`).

Group commit: callers `await record(...)`, which returns only once the record's batch is committed.
While one batch is being written, newly arriving records queue up and go together in the next one,
so under load there is one insert and one commit per batch, not per request; when idle, a lone record
is written at once (no timer, no added latency). What must precede a caller's answer once its record is
committed (the exchange's decision line) is its `committed` callback: the writer runs the callbacks of
a batch, in the callers' contexts, inside `batched_lines()`, so their lines leave in one write, and only
then wakes the callers.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from exchange.logging import batched_lines
from exchange.store.base import Store, StoreUnavailable
from schemas.records import OTHER, AuditRecord, DenialCount

if TYPE_CHECKING:
    from exchange.telemetry import ServiceMetrics

log = structlog.get_logger("exchange.audit")


class Auditor:
    def __init__(self, store: Store, *, max_batch: int = 512, metrics: ServiceMetrics | None = None) -> None:
        self._store = store
        self._metrics = metrics
        self._max_batch = max_batch
        self._pending: list[_Waiter] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    @property
    def queue_depth(self) -> int:
        """Records waiting for a batch (not counting the batch being written)."""
        return len(self._pending)

    async def record(self, record: AuditRecord, committed: Callable[[], None] | None = None) -> None:
        """Return once the record is committed; raises StoreUnavailable if it is not.

        `committed` runs once the record's batch is committed, before this call returns, in the
        caller's context variables; its lines (exchange.logging.RequestLine) leave with the batch's
        in one write. Not called when the record is not committed; whatever it raises, this raises.
        """
        if self._task is None or self._closing:
            raise StoreUnavailable("audit writer is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        context = None if committed is None else contextvars.copy_context()
        self._pending.append((record, future, committed, context))
        self._wake.set()
        await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                try:
                    await self._store.append_audit([rec for rec, *_ in batch])
                except Exception as exc:  # every waiter learns its record is not committed
                    log.error("audit_write_failed", records=len(batch), error=exc.__class__.__name__)
                    if self._metrics is not None:
                        self._metrics.store_errors.inc(("audit",))
                    failure = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(str(exc))
                    for _, fut, _, _ in batch:
                        if not fut.done():
                            fut.set_exception(failure)
                else:
                    if self._metrics is not None:
                        self._metrics.audit_batch(len(batch))
                    _committed(batch)
            if self._closing:
                return


# A record, its caller's future, and what runs once it is committed (in the caller's context).
_Waiter = tuple[AuditRecord, "asyncio.Future[None]", Callable[[], None] | None, contextvars.Context | None]


def _committed(batch: list[_Waiter]) -> None:
    """A committed batch: its callbacks (their lines in one write), then its callers resume."""
    errors: dict[int, Exception] = {}
    try:
        with batched_lines():
            for index, (_, fut, committed, context) in enumerate(batch):
                if committed is not None and context is not None and not fut.done():
                    try:
                        context.run(committed)
                    except Exception as exc:  # the caller's own failure: it raises there, as if it ran there
                        errors[index] = exc
    except Exception as exc:  # the lines could not be written (a broken log stream): each caller with a
        # line raises it, as it did when it wrote its own, and the writer goes on for everyone else
        for index, (_, _, committed, _) in enumerate(batch):
            if committed is not None:
                errors.setdefault(index, exc)
    # Only now, after the write: no caller of this batch can answer before its line has left.
    for index, (_, fut, _, _) in enumerate(batch):
        if not fut.done():
            if index in errors:
                fut.set_exception(errors[index])
            else:
                fut.set_result(None)


# (reason, error, client_id, source): what one count is kept under.
_Key = tuple[str, str, str | None, str | None]
# Windows kept in memory while the store cannot take them; older ones are dropped, loudly.
MAX_UNWRITTEN_WINDOWS = 60


class DenialTally:
    """Counts of refusals before client authentication: the cheap path for unauthenticated callers.

    Whoever has not authenticated is nobody yet, and whatever they send costs them nothing, so their
    refusals are not recorded one by one: each is counted under (reason, error, client_id as given,
    source address) in fixed windows of `window` seconds, and each window is written once it is over
    (and at shutdown) as one row per key, added into the rows of other workers and replicas. A request
    costs a dict update, no store I/O. The rows are bounded whatever is sent: past `max_keys` keys in a
    window the source is folded into `OTHER`, and so is a client_id that is not a configured client;
    past twice that, everything is, so a window holds at most 2 * max_keys + 1 keys per worker, and
    every refusal is still counted.
    """

    def __init__(
        self,
        store: Store,
        *,
        window: int,
        max_keys: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._window = window
        self._max_keys = max_keys
        self._clock = clock
        self._windows: dict[int, dict[_Key, int]] = {}
        self._task: asyncio.Task[None] | None = None

    def count(self, record: AuditRecord, source: str | None, *, configured_client: bool = False) -> None:
        """Count one refusal of a caller that did not authenticate (its record is not stored);
        `configured_client`: its client_id names a configured client (kept when keys are folded)."""
        start = int(record.time // self._window) * self._window
        counts = self._windows.setdefault(start, {})
        key: _Key = (record.reason or "", record.error or "", record.client_id, source)
        if key not in counts and len(counts) >= self._max_keys:
            client = record.client_id if configured_client else OTHER
            key = (key[0], key[1], client, OTHER)
            if key not in counts and len(counts) >= 2 * self._max_keys:
                key = (OTHER, OTHER, OTHER, OTHER)
        counts[key] = counts.get(key, 0) + 1

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="denial-tally")

    async def stop(self) -> None:
        """Write every window, finished or not."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush(everything=True)

    async def _run(self) -> None:
        while True:
            now = self._clock()
            await asyncio.sleep(self._window - now % self._window + 0.01)  # just after a window ends
            await self.flush()

    async def flush(self, *, everything: bool = False) -> None:
        """Write the windows that are over (all of them with `everything`); keep them if that fails.

        A refusal counted while the write is under way (even one of a window being written: a request
        that began before the window ended) starts a fresh count, written by the next flush and added
        to the same row.
        """
        current = int(self._clock() // self._window) * self._window
        taken = {s: self._windows.pop(s) for s in sorted(self._windows) if everything or s < current}
        if not taken:
            return
        rows = [
            DenialCount(
                window_start=start,
                window_seconds=self._window,
                reason=reason,
                error=error,
                client_id=client_id,
                source=source,
                count=n,
            )
            for start, counts in taken.items()
            for (reason, error, client_id, source), n in counts.items()
        ]
        try:
            await self._store.add_denial_counts(rows)
        except Exception as exc:  # the store may be down: put them back, try after the next window
            log.warning("denial_counts_unwritten", windows=len(taken), error=exc.__class__.__name__)
            for start, counts in taken.items():
                into = self._windows.setdefault(start, {})
                for key, n in counts.items():
                    into[key] = into.get(key, 0) + n
            for start in sorted(self._windows)[:-MAX_UNWRITTEN_WINDOWS]:
                lost = self._windows.pop(start)
                log.error("denial_counts_dropped", window_start=start, denials=sum(lost.values()))
            return
        log.info(
            "denial_counts_written", windows=len(taken), rows=len(rows), denials=sum(r.count for r in rows)
        )
