"""The exchange against its limit and against a peer, in one run, on one core.

Per store (PostgreSQL by default): a fake IdP with a fresh ES256 key mints a pool of distinct
identity tokens; `exchange serve` (one worker, pinned to CPU 0) trusts it, with one client
(client_secret_basic) and the purpose `payments.approve` (three rules, ES256 purpose tokens, audit
committed before each answer). wrk on CPU 1 measures GET /healthz and POST /token (one pool token per
request); the raw ES256 verify and sign are timed on CPU 0 in the same run; the peer, panva
oidc-provider answering client_credentials with ES256 JWT access tokens, runs under the same pinning
and the same wrk. One table: our rate, the limit 1 / (healthz time + raw verify + raw sign), the
peer's rate, ours/limit and ours/peer, and p99 at 4 connections. Every 200 must have its committed
audit row (checked in the store after the phase).

    .venv/bin/python bench/exchange_bench.py                        # PostgreSQL, peer, 10 s phases
    .venv/bin/python bench/exchange_bench.py --rounds 3             # medians and ranges of 3 rounds
    .venv/bin/python bench/exchange_bench.py --stores sqlite,postgres --peer off
    .venv/bin/python bench/exchange_bench.py --profile /tmp/prof    # py-spy over the /token phase
    .venv/bin/python bench/exchange_bench.py --soak 600             # RSS first vs last minute
    .venv/bin/python bench/exchange_bench.py --workers 2 --peer off # two granian workers
    .venv/bin/python bench/exchange_bench.py --micro 3000           # in-process costs per outcome
    .venv/bin/python bench/exchange_bench.py --summarise /tmp/prof/postgres.collapsed
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import crypto, load, peer, procs, profile, report
from harness.idp import FakeIdP
from harness.load import LoadResult
from harness.service import Exchange


@dataclass
class Round:
    healthz: LoadResult
    token: LoadResult
    latency: LoadResult  # POST /token at --latency-connections
    verify_s: float
    sign_s: float
    audit: str
    audit_ok: bool
    pg_note: str = ""
    peer: LoadResult | None = None
    peer_latency: LoadResult | None = None

    @property
    def limit(self) -> float:
        return 1.0 / (1.0 / self.healthz.rps + self.verify_s + self.sign_s)

    @property
    def limit_per_cpu(self) -> float | None:
        h = self.healthz.per_cpu_second
        return 1.0 / (1.0 / h + self.verify_s + self.sign_s) if h else None


@dataclass
class StoreRun:
    store: str
    server_command: str
    rounds: list[Round] = field(default_factory=list)
    wrk_command: str = ""


def spread(values: list[float | None], fmt: str = "{:,.0f}") -> str:
    """median (min-max) over rounds."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "?"
    med = fmt.format(statistics.median(vals))
    return med if len(vals) == 1 else f"{med} ({fmt.format(min(vals))}-{fmt.format(max(vals))})"


def pg_note(usage: dict[str, float], server_us: float) -> str:
    if not usage:
        return ""
    return (
        f"PostgreSQL per exchange: {usage['backend_us']:.0f} µs CPU in this database's backends, "
        f"{usage['all_us']:.0f} µs in all postgres processes (WAL writer, checkpointer, others' work too), "
        f"{usage['wal_bytes']:,.0f} WAL bytes; {usage['per_commit']:.1f} exchanges per transaction "
        "(each batch's INSERT, and the pool's reset of the released connection); "
        f"server {server_us:.0f} µs CPU per exchange"
    )


def profile_both(folder: Path, store: str, pid: int, seconds: float) -> threading.Thread:
    """py-spy over the /token phase: its first half GIL-holding samples, its second half on-CPU."""
    folder.mkdir(parents=True, exist_ok=True)

    def go() -> None:
        for mode in ("gil", "cpu"):
            spy = profile.attach(pid, folder / f"{store}-{mode}.collapsed", seconds / 2, mode=mode)
            spy.wait(seconds + 60)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def measure_round(
    args: argparse.Namespace, ex: Exchange, pool: Path, work: Path, pr: peer.Peer | None, index: int
) -> Round:
    server = ex.server
    assert server is not None
    common: dict[str, Any] = {"workdir": work, "server": server, "server_cpus": ex.cpus}
    healthz = load.run(f"{ex.url}/healthz", concurrency=args.concurrency, duration=args.duration, **common)
    costs = crypto.raw_costs(cpus=ex.cpus.split(",")[0])
    phase = f"bench-{index}-{secrets.token_hex(4)}"
    before = ex.pg_usage()
    profiler = None
    if args.profile and index == 0:
        profiler = profile_both(Path(args.profile), ex.store, server.pid, args.duration)
    token = load.run(
        f"{ex.url}/token",
        method="POST",
        headers=ex.headers(phase),
        pool=pool,
        concurrency=args.concurrency,
        duration=args.duration,
        **common,
    )
    if profiler is not None:
        profiler.join(args.duration + 60)
    n = token.ok + token.non200
    note = pg_note(before.since(n), 1e6 * (token.server_cpu or 0) * token.duration / max(1, n))
    audit, ok = ex.audit_check(phase, token.ok, args.concurrency)
    lat_phase = f"{phase}-lat"
    latency = load.run(
        f"{ex.url}/token",
        method="POST",
        headers=ex.headers(lat_phase),
        pool=pool,
        concurrency=args.latency_connections,
        duration=args.duration,
        **common,
    )
    audit2, ok2 = ex.audit_check(lat_phase, latency.ok, args.latency_connections)
    r = Round(
        healthz,
        token,
        latency,
        costs["ES256 verify"],
        costs["ES256 sign"],
        f"{audit}; at {args.latency_connections} connections {audit2}",
        ok and ok2,
        note,
    )
    if pr is not None:
        pcommon: dict[str, Any] = {
            "workdir": work,
            "server": pr.server,
            "method": "POST",
            "headers": pr.headers(),
            "body": peer.REQUEST,
            "duration": args.duration,
        }
        r.peer = load.run(f"{pr.url}/token", concurrency=args.concurrency, **pcommon)
        r.peer_latency = load.run(f"{pr.url}/token", concurrency=args.latency_connections, **pcommon)
    for label, res in (
        ("healthz", healthz),
        ("token", token),
        (f"token c={args.latency_connections}", latency),
        ("peer", r.peer),
        (f"peer c={args.latency_connections}", r.peer_latency),
    ):
        if res is not None:
            print(
                f"#   round {index + 1} {ex.store} {label:12} {res.rps:9,.0f}/s  p50 {res.p50_ms:7.2f} ms  "
                f"p99 {res.p99_ms:7.2f} ms  errors {res.errors}  {res.cpu_note()}",
                flush=True,
            )
    print(
        f"#   round {index + 1} raw ES256 verify {costs['ES256 verify'] * 1e6:.1f} µs, "
        f"sign {costs['ES256 sign'] * 1e6:.1f} µs; audit: {r.audit}; {note}",
        flush=True,
    )
    return r


def mint_pool(args: argparse.Namespace, idp: FakeIdP) -> list[str]:
    n = 1 if args.repeat_token else args.pool
    t0 = time.monotonic()
    tokens = idp.pool(n)
    print(f"# {n:,} distinct {idp.alg} subject tokens minted in {time.monotonic() - t0:.1f} s", flush=True)
    return tokens


def run_store(
    args: argparse.Namespace, store: str, tokens: list[str], idp: FakeIdP, work: Path, pr: peer.Peer | None
) -> StoreRun:
    with Exchange(
        work / store,
        store,
        idp,
        client_auth=args.client_auth,
        launcher=args.launcher,
        workers=args.workers,
        cpus=args.server_cpus,
        pg_admin_dsn=args.pg_dsn,
    ) as ex:
        pool = ex.write_pool(tokens)
        server = ex.start()
        print(f"# server ({store}): {server.command}", flush=True)
        warm: dict[str, Any] = {"workdir": work, "duration": args.warmup, "concurrency": args.concurrency}
        if args.warmup >= 1:  # imports, connections, caches; under a request id no check counts
            load.run(f"{ex.url}/token", method="POST", headers=ex.headers("bench-warmup"), pool=pool, **warm)
            load.run(f"{ex.url}/healthz", **warm)
        if pr is not None and args.warmup >= 1:
            load.run(f"{pr.url}/token", method="POST", headers=pr.headers(), body=peer.REQUEST, **warm)
        run = StoreRun(store, server.command)
        for i in range(args.rounds):
            run.rounds.append(measure_round(args, ex, pool, work, pr, i))
        run.wrk_command = run.rounds[-1].token.command
        return run


def render(args: argparse.Namespace, runs: list[StoreRun], pr: peer.Peer | None, peer_note: str) -> str:
    notes = [
        f"{procs.pinning_note(args.server_cpus)}; wrk {args.concurrency} connections, {args.duration:g} s "
        f"per phase, {args.rounds} round(s) (median (min-max)); {args.workers} worker(s) via "
        f"`{args.launcher}`; subject tokens {args.subject_alg}, "
        + ("ONE token repeated" if args.repeat_token else f"a pool of {args.pool:,} distinct tokens")
        + f"; purpose tokens ES256; 3 rules; client auth {args.client_auth}.",
    ]
    out = [report.header("Exchange vs limit vs peer", *notes)]
    rows: list[list[object]] = []
    c, lc = args.concurrency, args.latency_connections
    for run in runs:
        rs = run.rounds
        s = run.store
        rows += [
            [
                f"ours ({s}): GET /healthz",
                spread([r.healthz.rps for r in rs]),
                spread([r.healthz.per_cpu_second for r in rs]),
                spread([r.healthz.p99_ms for r in rs], "{:.2f}"),
                sum(r.healthz.errors for r in rs),
            ],
            [
                "raw ES256 verify + sign (server CPU)",
                spread([1e6 * (r.verify_s + r.sign_s) for r in rs], "{:.1f}") + " µs",
                "",
                "",
                "",
            ],
            [
                "limit: 1 / (healthz + verify + sign)",
                spread([r.limit for r in rs]),
                spread([r.limit_per_cpu for r in rs]),
                "",
                "",
            ],
            [
                f"**ours ({s}): POST /token**",
                spread([r.token.rps for r in rs]),
                spread([r.token.per_cpu_second for r in rs]),
                spread([r.token.p99_ms for r in rs], "{:.2f}"),
                sum(r.token.errors for r in rs),
            ],
            [
                f"**ours / limit ({s})**",
                spread([r.token.rps / r.limit for r in rs], "{:.2f}"),
                spread([(r.token.per_cpu_second or 0) / (r.limit_per_cpu or 1) for r in rs], "{:.2f}"),
                "",
                "",
            ],
        ]
        if pr is not None:
            rows += [
                [
                    f"**ours / peer ({s})**",
                    spread([r.token.rps / r.peer.rps for r in rs if r.peer], "{:.2f}"),
                    spread(
                        [(r.token.per_cpu_second or 0) / (r.peer.per_cpu_second or 1) for r in rs if r.peer],
                        "{:.2f}",
                    ),
                    "",
                    "",
                ],
            ]
        rows.append(
            [
                f"ours ({s}): POST /token p99 at {lc} connections",
                "",
                "",
                spread([r.latency.p99_ms for r in rs], "{:.2f}"),
                sum(r.latency.errors for r in rs),
            ]
        )
    if pr is not None and runs:
        rs = runs[-1].rounds
        rows[len(rows) :] = [
            [
                f"peer oidc-provider {peer.version()}: client_credentials",
                spread([r.peer.rps for r in rs if r.peer]),
                spread([r.peer.per_cpu_second for r in rs if r.peer]),
                spread([r.peer.p99_ms for r in rs if r.peer], "{:.2f}"),
                sum(r.peer.errors for r in rs if r.peer),
            ],
            [
                f"peer: p99 at {lc} connections",
                "",
                "",
                spread([r.peer_latency.p99_ms for r in rs if r.peer_latency], "{:.2f}"),
                sum(r.peer_latency.errors for r in rs if r.peer_latency),
            ],
        ]
    elif peer_note:
        rows.append(["peer", peer_note, "", "", ""])
    out.append(
        report.table(
            ["", "throughput", "per server CPU-second", f"p99 ms (c={c} unless said)", "errors"], rows
        )
    )
    out.append("")
    for run in runs:
        out.append(f"- server ({run.store}): `{run.server_command}`")
        out.append(
            f"- audit ({run.store}): "
            + " | ".join(r.audit for r in run.rounds)
            + (" — OK" if all(r.audit_ok for r in run.rounds) else " — **MISMATCH**")
        )
        for r in run.rounds:
            if r.pg_note:
                out.append(f"- {r.pg_note}")
        out.append(f"- server CPU in the /token phase: {run.rounds[-1].token.cpu_note()}")
    if pr is not None:
        out.append(
            f"- peer: `{pr.server.command}`"
            + (f" ({last.cpu_note()})" if runs and (last := runs[-1].rounds[-1].peer) else "")
        )
    if runs:
        out.append(
            f"- load: `{runs[-1].wrk_command}` (Lua: one pool body per request; GET and the peer: fixed)"
        )
    return "\n".join(out)


def soak(args: argparse.Namespace, tokens: list[str], idp: FakeIdP, work: Path) -> int:
    """--soak: one long /token phase; the server's RSS sampled throughout, first vs last window."""
    window = min(60.0, args.soak / 5)
    store = args.stores.split(",")[0]
    with Exchange(
        work / store,
        store,
        idp,
        client_auth=args.client_auth,
        launcher=args.launcher,
        workers=args.workers,
        cpus=args.server_cpus,
        pg_admin_dsn=args.pg_dsn,
    ) as ex:
        pool = ex.write_pool(tokens)
        server = ex.start()
        load.run(
            f"{ex.url}/token",
            method="POST",
            headers=ex.headers("bench-warmup"),
            pool=pool,
            workdir=work,
            duration=args.warmup,
            concurrency=args.concurrency,
        )
        samples: list[tuple[float, int]] = []
        done = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not done.wait(min(5.0, window / 6)):
                samples.append((time.monotonic() - t0, procs.rss_bytes(server.pids())))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        phase = f"soak-{secrets.token_hex(4)}"
        result = load.run(
            f"{ex.url}/token",
            method="POST",
            headers=ex.headers(phase),
            pool=pool,
            workdir=work,
            server=server,
            concurrency=args.concurrency,
            duration=args.soak,
        )
        done.set()
        sampler.join()
        audit, ok = ex.audit_check(phase, result.ok, args.concurrency)
    span = samples[-1][0] if samples else 0.0
    first = [rss for t, rss in samples if t <= window]
    last = [rss for t, rss in samples if t >= span - window]
    if not first or not last:
        raise SystemExit("too few RSS samples: use a longer --soak")
    a, b = statistics.mean(first), statistics.mean(last)
    growth = (b - a) / a
    flat = abs(growth) <= 0.10
    print(
        report.header(
            f"RSS over a {result.duration:.0f} s /token run",
            f"{procs.pinning_note(args.server_cpus)}; {store}; "
            f"wrk {args.concurrency} connections; pool of {len(tokens):,} tokens; windows of {window:g} s; "
            f"{len(samples)} samples of the server's process tree RSS.",
        )
    )
    print(
        report.table(
            ["", "value"],
            [
                ["throughput", f"{result.rps:,.0f}/s over {result.duration:.0f} s ({result.errors} errors)"],
                [f"RSS, first {window:g} s (mean)", f"{a / 2**20:.1f} MiB"],
                [f"RSS, last {window:g} s (mean)", f"{b / 2**20:.1f} MiB"],
                ["growth", f"{100 * growth:+.1f}% — " + ("within 10%" if flat else "**NOT within 10%**")],
                ["audit", audit + (" — OK" if ok else " — **MISMATCH**")],
            ],
        )
    )
    print(f"\n- server: `{server.command}`\n- load: `{result.command}`")
    return 0 if ok and result.errors == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stores", default="postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured phase (>= 1)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per warm-up phase; 0: none")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat the measured phases; medians and ranges"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-connections", type=int, default=4, help="connections of the p99 phase")
    parser.add_argument("--pool", type=int, default=50_000, help="distinct subject tokens")
    parser.add_argument("--repeat-token", action="store_true", help="one subject token for every request")
    parser.add_argument("--subject-alg", choices=["ES256", "RS256"], default="ES256")
    parser.add_argument(
        "--client-auth", choices=["client_secret_basic", "none"], default="client_secret_basic"
    )
    parser.add_argument(
        "--launcher",
        choices=["serve", "granian"],
        default="serve",
        help="`exchange serve`, or granian on the app factory exchange.app:app_from_env",
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server-cpus", help="CPUs of the server (default 0; 0,1 with --workers > 1)")
    parser.add_argument(
        "--peer",
        choices=["auto", "on", "off"],
        default="auto",
        help="auto: run the peer if it can be installed; on: fail if it cannot",
    )
    parser.add_argument("--pg-dsn", default=None, help="admin DSN of the PostgreSQL server")
    parser.add_argument("--profile", metavar="DIR", help="py-spy over the first round's /token phase")
    parser.add_argument(
        "--soak", type=float, metavar="SECONDS", help="RSS growth run instead (600: ten minutes)"
    )
    parser.add_argument("--micro", type=int, metavar="N", help="in-process costs per outcome instead, N each")
    parser.add_argument("--summarise", metavar="FILE", help="summarise a saved py-spy profile and exit")
    args = parser.parse_args()
    if args.summarise:
        print(profile.summarise(Path(args.summarise)))
        return 0
    if not 1 <= args.duration <= 120 or not 1 <= args.rounds <= 10 or not 1 <= args.concurrency <= 1024:
        parser.error("duration 1..120, rounds 1..10, concurrency 1..1024")
    if args.soak is not None and not 5 <= args.soak <= load.MAX_DURATION:
        parser.error(f"--soak 5..{load.MAX_DURATION}")
    if not 1 <= args.pool <= 200_000 or not 1 <= args.workers <= 8:
        parser.error("pool 1..200000, workers 1..8")
    args.server_cpus = args.server_cpus or ("0,1" if args.workers > 1 else procs.SERVER_CPUS)
    from harness.service import PG_ADMIN_DSN

    args.pg_dsn = args.pg_dsn or PG_ADMIN_DSN
    procs.pin_self()
    print(f"# {report.command()}", flush=True)
    idp = FakeIdP("https://idp.bench.example", args.subject_alg)
    if args.micro:
        from harness import inproc

        with tempfile.TemporaryDirectory(prefix="exchange-micro-") as tmp:
            print(inproc.micro(args, idp, Path(tmp)))
        return 0
    tokens = mint_pool(args, idp)
    with tempfile.TemporaryDirectory(prefix="exchange-bench-") as tmp:
        work = Path(tmp)
        if args.soak:
            return soak(args, tokens, idp, work)
        pr, peer_note = None, ""
        if args.peer != "off":
            try:
                pr = peer.Peer(cpus=args.server_cpus.split(",")[0])
                print(f"# peer: {pr.server.command}", flush=True)
            except peer.PeerUnavailable as exc:
                if args.peer == "on":
                    raise SystemExit(f"peer unavailable: {exc}") from None
                peer_note = f"not run: {exc}"
                print(f"# peer {peer_note}", flush=True)
        try:
            runs = [
                run_store(args, s.strip(), tokens, idp, work, pr) for s in args.stores.split(",") if s.strip()
            ]
        finally:
            if pr is not None:
                pr.close()
    print()
    print(render(args, runs, pr, peer_note))
    if args.profile:
        for f in sorted(Path(args.profile).glob("*.collapsed")):
            print(f"\nProfile `{f}` (py-spy during the /token phase; profiling slows the server):\n")
            print("```\n" + profile.summarise(f) + "\n```")
    good = all(
        r.audit_ok and r.token.errors == 0 and r.latency.errors == 0 for run in runs for r in run.rounds
    )
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
