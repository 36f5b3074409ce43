"""Audit durability at speed, against a real PostgreSQL: group commit vs one insert+commit per request.

Both modes keep the service's promise (a request is released only after its record is committed);
they differ in how many round trips and commits that costs:

  per-record    every request calls `store.append_audit([record])`: one INSERT and one commit each,
                spread over the pool's connections.
  group commit  every request calls `Auditor.record(record)` (exchange/audit.py): records arriving
                while a batch is being written go together in the next one, one INSERT (unnest of
                arrays) and one commit per batch.

A second table compares the two ways to write one batch: the store's single `INSERT ... SELECT FROM
unnest(...)` against `executemany` inside one transaction.

Usage (creates and drops its own database on the server):
    .venv/bin/python bench/audit_bench.py [--dsn postgresql://postgres@127.0.0.1:5432/test]
        [--requests 4000] [--concurrency 64,256] [--append-results]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import structlog

from exchange.audit import Auditor
from exchange.store.postgres import PostgresStore
from schemas.config import StoreConfig
from schemas.records import AuditRecord, RuleOutcome

RESULTS = Path(__file__).with_name("RESULTS.md")


def record(n: int) -> AuditRecord:
    """A realistic granted-decision record (every column filled, one rule outcome)."""
    return AuditRecord(
        time=time.time(),
        request_id=f"bench-{n}",
        decision="granted",
        client_id="bank-web",
        issuer="https://idp.example.com",
        sub=f"user-{n % 1000}",
        purpose="payments.approve",
        audience="https://payments.internal",
        jti=uuid.uuid4().hex,
        exp=int(time.time()) + 60,
        rules=[RuleOutcome(rule="claim", outcome="allow")],
    )


async def drive(requests: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Run `requests` calls with at most `concurrency` in flight; the rate in requests/s."""
    counter = iter(range(requests))

    async def worker() -> None:
        for n in counter:
            await one(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started)


async def audited_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM audit_records"))
    finally:
        await conn.close()


async def compare_modes(dsn: str, requests: int, concurrency: int, pool: int) -> tuple[float, float]:
    store = PostgresStore(StoreConfig(url=dsn, pool_min_size=pool, pool_max_size=pool))
    await store.open()
    try:
        before = await audited_rows(dsn)

        async def per_record(n: int) -> None:
            await store.append_audit([record(n)])

        per_record_rate = await drive(requests, concurrency, per_record)

        auditor = Auditor(store)
        await auditor.start()
        try:
            grouped_rate = await drive(requests, concurrency, lambda n: auditor.record(record(n)))
        finally:
            await auditor.stop()
        # Both modes only return after the commit: every request's row must be there.
        assert await audited_rows(dsn) - before == 2 * requests
    finally:
        await store.close()
    return per_record_rate, grouped_rate


async def compare_batch_statements(dsn: str, sizes: list[int], rounds: int) -> list[tuple[int, float, float]]:
    """Median ms to write one batch: the store's unnest INSERT vs executemany in one transaction."""
    store = PostgresStore(StoreConfig(url=dsn, pool_min_size=1, pool_max_size=1))
    await store.open()
    conn = await asyncpg.connect(dsn)
    insert_one = (
        "INSERT INTO audit_records (time, request_id, decision, client_id, issuer, sub, purpose, audience,"
        " jti, exp, rules) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb)"
    )
    out = []
    try:
        for size in sizes:
            unnest_ms, many_ms = [], []
            for _ in range(rounds):
                batch = [record(i) for i in range(size)]
                t = time.perf_counter()
                await store.append_audit(batch)
                unnest_ms.append((time.perf_counter() - t) * 1000)
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
                        r.jti,
                        r.exp,
                        '[{"rule":"claim","outcome":"allow"}]',
                    )
                    for r in batch
                ]
                t = time.perf_counter()
                async with conn.transaction():
                    await conn.executemany(insert_one, rows)
                many_ms.append((time.perf_counter() - t) * 1000)
            out.append((size, statistics.median(unnest_ms), statistics.median(many_ms)))
    finally:
        await conn.close()
        await store.close()
    return out


def _drop(*_: object) -> None:
    raise structlog.DropEvent


async def main(args: argparse.Namespace) -> str:
    # The auditor logs one line per decision; a benchmark wants numbers, not 10,000 log lines.
    structlog.configure(processors=[_drop])
    name = f"px_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = urlunsplit(urlsplit(args.dsn)._replace(path="/" + name))
    lines: list[str] = []
    try:
        server = await admin.fetchval("SHOW server_version")
        sync = await admin.fetchval("SHOW synchronous_commit")
        fsync = await admin.fetchval("SHOW fsync")
        lines.append(
            f"PostgreSQL {server} on 127.0.0.1 (synchronous_commit={sync}, fsync={fsync}), "
            f"{os.cpu_count()} cores, pool {args.pool}, {args.requests} requests per mode\n"
        )
        lines.append("| concurrent requests | one insert+commit per request | group commit | ratio |")
        lines.append("| ---: | ---: | ---: | ---: |")
        for concurrency in args.concurrency:
            per, grouped = await compare_modes(dsn, args.requests, concurrency, args.pool)
            lines.append(
                f"| {concurrency} | {per:,.0f} records/s | {grouped:,.0f} records/s | {grouped / per:.1f}x |"
            )
            print(lines[-1], flush=True)
        lines.append("")
        lines.append(f"Writing one batch (median of {args.rounds}):\n")
        lines.append(
            "| batch size | INSERT ... SELECT FROM unnest (store) | executemany in one transaction |"
        )
        lines.append("| ---: | ---: | ---: |")
        for size, unnest_ms, many_ms in await compare_batch_statements(dsn, [1, 10, 100, 500], args.rounds):
            lines.append(f"| {size} | {unnest_ms:.2f} ms | {many_ms:.2f} ms |")
            print(lines[-1], flush=True)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn",
        default=os.environ.get("PURPOSE_EXCHANGE_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[64, 256])
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--append-results", action="store_true", help=f"append a section to {RESULTS.name}")
    args = parser.parse_args()
    table = asyncio.run(main(args))
    print("\n" + table)
    if args.append_results:
        command = " ".join(
            shlex.quote(a) for a in [".venv/bin/python", "bench/audit_bench.py", *sys.argv[1:]]
        )
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a") as f:
            if f.tell() == 0:
                f.write("# Benchmark results\n")
            f.write(f"\n## Audit group commit on PostgreSQL ({stamp})\n\n`{command}`\n\n{table}\n")
