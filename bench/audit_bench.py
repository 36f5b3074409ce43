"""The audit trail's cost, seen from outside: what PostgreSQL (or SQLite) spends per exchange as the
load grows, through a real `exchange serve` (one worker, CPU 0) driven by wrk (CPU 1).

Every exchange's answer waits for its audit record's commit; the service's group commit lets the
records that arrive while one batch is being written go together in the next. Per concurrency level
this prints the rate, p99, exchanges per commit (pg_stat_database), PostgreSQL CPU per exchange
(this database's backends, from /proc), WAL bytes per exchange, and the check that every 200 has its
committed row. PostgreSQL is not pinned: it runs where the scheduler puts it, as in production.

    .venv/bin/python bench/audit_bench.py [--concurrency 1,4,16,64,256] [--duration 5] [--stores postgres]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
from pathlib import Path

from harness import load, procs, report
from harness.idp import FakeIdP
from harness.service import PG_ADMIN_DSN, Exchange, pg

_ROW_BYTES = (
    "SELECT count(*), pg_total_relation_size('audit_records')::float8 / greatest(count(*), 1) "
    "FROM audit_records"
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", default="1,4,16,64,256")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--stores", default="postgres")
    parser.add_argument("--pool", type=int, default=20_000, help="distinct subject tokens")
    parser.add_argument("--pg-dsn", default=PG_ADMIN_DSN)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if not all(1 <= c <= 1024 for c in levels) or not 1 <= args.duration <= 60:
        parser.error("concurrency 1..1024, duration 1..60")
    procs.pin_self()
    idp = FakeIdP("https://idp.bench.example")
    tokens = idp.pool(min(args.pool, 200_000))
    rows, ok_all, commands = [], True, []
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        work = Path(tmp)
        for store in args.stores.split(","):
            with Exchange(work / store, store, idp, pg_admin_dsn=args.pg_dsn) as ex:
                pool = ex.write_pool(tokens)
                server = ex.start()
                commands.append(f"- server ({store}): `{server.command}`")
                load.run(
                    f"{ex.url}/token",
                    method="POST",
                    headers=ex.headers("warmup"),
                    pool=pool,
                    concurrency=16,
                    duration=1,
                    workdir=work,
                )
                for c in levels:
                    phase = f"audit-{c}-{secrets.token_hex(3)}"
                    usage = ex.pg_usage()
                    r = load.run(
                        f"{ex.url}/token",
                        method="POST",
                        headers=ex.headers(phase),
                        pool=pool,
                        concurrency=c,
                        duration=args.duration,
                        workdir=work,
                        server=server,
                    )
                    db = usage.since(r.ok + r.non200)
                    audit, ok = ex.audit_check(phase, r.ok, c)
                    ok_all = ok_all and ok and r.errors == 0
                    server_us = 1e6 * (r.server_cpu or 0) * r.duration / max(1, r.ok + r.non200)
                    rows.append(
                        [
                            store,
                            c,
                            report.rate(r.rps),
                            report.ms(r.p99_ms),
                            f"{server_us:.0f} µs",
                            f"{db['per_commit']:.1f}" if db else "-",
                            f"{db['backend_us']:.0f} µs" if db else "-",
                            f"{db['wal_bytes']:,.0f}" if db else "-",
                            f"{r.errors}",
                            "OK" if ok else f"**MISMATCH** {audit}",
                        ]
                    )
                    print(f"# {store} c={c}: {r.rps:,.0f}/s p99 {r.p99_ms:.2f} ms; {audit}; {db}", flush=True)
                commands.append(f"- load ({store}): `{r.command}`")
                if ex.database is not None:
                    size = pg(ex.store_url, _ROW_BYTES)[0]
                    commands.append(
                        f"- audit_records ({store}): {size[0]:,} rows, {size[1]:,.0f} bytes per row "
                        "with its indexes (pg_total_relation_size)"
                    )
    print(
        report.header(
            "Audit cost per exchange by load",
            f"{procs.pinning_note()}; PostgreSQL unpinned; wrk {args.duration:g} s per level; ES256 subject "
            "tokens, one per request; every answer waits for its audit commit. Transactions are "
            "pg_stat_database.xact_commit: each batch's INSERT, and the pool's reset of the released "
            "connection.",
        )
    )
    print(
        report.table(
            [
                "store",
                "connections",
                "exchanges",
                "p99",
                "server CPU / exchange",
                "exchanges / transaction",
                "PostgreSQL CPU / exchange",
                "WAL bytes / exchange",
                "errors",
                "audit",
            ],
            rows,
        )
    )
    print("\n" + "\n".join(commands))
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
