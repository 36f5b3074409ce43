"""Red team: the PostgreSQL audit batch (one JSON text through json_to_recordset) with hostile text.

Every text field an unauthenticated or authenticated caller can reach (client_id, audience, scope-derived
purpose, reasons, rule codes) is set to values that stress the JSON path: NUL, a NUL spelled out, quotes,
backslashes, control characters, non-BMP characters, U+2028, and a large value. The batch must commit
whole, in order, each column holding its own record's value exactly (NUL replaced by U+FFFD).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from exchange.store.postgres import PostgresStore
from schemas.config import StoreConfig
from schemas.records import AuditRecord, RuleOutcome

pytestmark = pytest.mark.postgres

T0 = 1_800_000_000.0

HOSTILE = [
    "\x00",
    "a\x00b\x00",
    "\\u0000",
    "\\\\u0000",
    "\\",
    '"',
    '","client_id":"injected',
    '"}]\'; DROP TABLE audit_records; --',
    "\t\n\r\x01\x1f\x7f",
    "\u2028\u2029\ufeff\ufffd",
    "\U0001f600 \u00e9 \u4e2d",
    "\\ud800",
    "\\x00",
    "null",
    "[]",
    "{}",
    "x" * 200_000,
    "\x00\\u0000\x00",
]


def nul_free(value: str) -> str:
    return value.replace("\x00", "\ufffd")


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(StoreConfig(url=pg_url, connect_timeout=2.0, command_timeout=10.0))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_a_batch_of_hostile_text_commits_whole_in_order_with_every_column_its_own(
    pg_store: PostgresStore,
) -> None:
    records = []
    for i, value in enumerate(HOSTILE):
        # Each field gets a different value from the list, so a column shift would show.
        pick = [HOSTILE[(i + k) % len(HOSTILE)] for k in range(9)]
        records.append(
            AuditRecord(
                time=T0 + i,
                request_id=f"rt-{i}",
                decision="denied" if i % 2 else "granted",
                client_id=pick[0],
                issuer=pick[1],
                sub=pick[2],
                purpose=pick[3],
                audience=pick[4],
                error=pick[5],
                denial=pick[6],
                reason=pick[7],
                jti=f"jti-{i}",
                exp=2**62 + i,
                actor=pick[8],
                rules=[RuleOutcome(rule=value, outcome="deny", code=pick[1])],
                trace_id=value,
                txn=pick[2],
            )
        )
    await pg_store.append_audit(records)
    stored = sorted(await pg_store.list_audit(limit=1000), key=lambda r: r.seq or 0)
    stored = [r for r in stored if r.request_id.startswith("rt-")]
    assert [r.request_id for r in stored] == [r.request_id for r in records]
    for want, got in zip(records, stored, strict=True):
        for name in ("client_id", "issuer", "sub", "purpose", "audience", "error", "denial", "reason",
                     "actor", "trace_id", "txn"):  # fmt: skip
            assert getattr(got, name) == nul_free(getattr(want, name)), name
        assert (got.time, got.exp, got.decision, got.jti) == (want.time, want.exp, want.decision, want.jti)
        assert got.rules == [
            RuleOutcome(rule=nul_free(o.rule), outcome=o.outcome, code=nul_free(o.code or ""))
            for o in want.rules
        ]
