"""The audit trail: every decision is one committed store record (and, from the exchange, one log line).

Group commit: callers `await record(...)`, which returns only once the record's batch is committed.
While one batch is being written, newly arriving records queue up and go together in the next one,
so under load there is one insert and one commit per batch, not per request; when idle, a lone record
is written at once (no timer, no added latency).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from exchange.store.base import Store, StoreUnavailable
from schemas.records import AuditRecord

if TYPE_CHECKING:
    from exchange.telemetry import ServiceMetrics

log = structlog.get_logger("exchange.audit")


class Auditor:
    def __init__(self, store: Store, *, max_batch: int = 512, metrics: ServiceMetrics | None = None) -> None:
        self._store = store
        self._metrics = metrics
        self._max_batch = max_batch
        self._pending: list[tuple[AuditRecord, asyncio.Future[None]]] = []
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

    async def record(self, record: AuditRecord) -> None:
        """Return once the record is committed; raises StoreUnavailable if it is not."""
        if self._task is None or self._closing:
            raise StoreUnavailable("audit writer is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        self._wake.set()
        await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                try:
                    await self._store.append_audit([rec for rec, _ in batch])
                except Exception as exc:  # every waiter learns its record is not committed
                    log.error("audit_write_failed", records=len(batch), error=exc.__class__.__name__)
                    if self._metrics is not None:
                        self._metrics.store_errors.inc(("audit",))
                    failure = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(str(exc))
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(failure)
                else:
                    if self._metrics is not None:
                        self._metrics.audit_batch(len(batch))
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
            if self._closing:
                return
