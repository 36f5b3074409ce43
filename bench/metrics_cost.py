"""What the metrics cost /token per request, measured in-process (no server, no load generator).

Two measures, both printed:
1. The instrumentation alone: exactly what the exchange does per request for its metrics (a step
   clock, five timed steps, the outcome counted, five step and one total histogram observations),
   timed with `timeit` in process CPU time (best of --repeat), minus the same loop doing
   nothing. This is the figure to quote: a few microseconds at most.
2. End to end through the app factory granian runs: CPU per granted exchange with `[metrics]
   enabled = true` and `false`, rounds alternated (ABAB...) so drift hits both; the median of the
   differences. Per-request CPU is hundreds of microseconds, so on a shared machine this is noisy:
   it shows the metrics are lost in the noise, not their exact price.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import report
from harness.idp import FakeIdP
from harness.inproc import App
from harness.service import Exchange

from exchange.telemetry import AUDIT, CLIENT_AUTH, MINT, RULES, TRUST, ServiceMetrics, Steps


def instrumentation(number: int, repeat: int) -> list[list[str]]:
    purposes = [f"purpose.{i}" for i in range(20)]
    clients = [f"client-{i}" for i in range(50)]
    metrics = ServiceMetrics(purposes=purposes, clients=clients)

    series = metrics.step_series

    def granted() -> None:
        steps = Steps(series)
        with steps(CLIENT_AUTH):
            pass
        with steps(TRUST):
            pass
        with steps(RULES):
            pass
        with steps(MINT):
            pass
        with steps(AUDIT):
            pass
        metrics.exchange_done("purpose.3", "client-7", "granted", None, steps)

    def denied_at_client_auth() -> None:
        steps = Steps(series)
        with steps(CLIENT_AUTH):
            pass
        with steps(AUDIT):
            pass
        metrics.exchange_done("purpose.3", "made-up", "invalid_client", None, steps)

    def bare() -> None:  # the same shape with nothing measured: what the code costs without metrics
        pass

    def best(fn: object) -> float:
        # CPU time of this process: on a shared machine, wall time would time the neighbours too.
        runs = timeit.repeat(fn, number=number, repeat=repeat, timer=time.process_time)  # type: ignore[arg-type]
        return min(runs) / number

    floor = best(bare)
    return [
        ["granted (5 steps, outcome, 6 histogram observations)", report.us(best(granted) - floor)],
        [
            "denied at client auth (2 steps, outcome, 3 observations)",
            report.us(best(denied_at_client_auth) - floor),
        ],
    ]


async def _cpu_per_granted(app: App, bodies: list[bytes], headers: dict[str, str]) -> float:
    t0 = time.process_time()
    for i in range(0, len(bodies), 64):
        answers = await asyncio.gather(*(app.call("POST", "/token", headers, b) for b in bodies[i : i + 64]))
        bad = [a for a in answers if a[0] != 200]
        if bad:
            raise RuntimeError(f"expected 200, got {bad[0][0]}: {bad[0][1][:300]!r}")
    return (time.process_time() - t0) / len(bodies)


def end_to_end(n: int, rounds: int) -> list[list[str]]:
    from exchange.app import app_from_env

    idp = FakeIdP("https://idp.bench.example", "ES256")
    with tempfile.TemporaryDirectory() as tmp, Exchange(Path(tmp), "sqlite", idp) as ex:
        os.environ.update(ex.env)
        base = ex.config.read_text()
        configs = {}
        for enabled in (True, False):
            path = Path(tmp) / f"metrics-{enabled}.toml"
            path.write_text(base + f"\n[metrics]\nenabled = {str(enabled).lower()}\n")
            configs[enabled] = path
        headers = ex.headers("metrics-cost")

        async def run() -> dict[bool, list[float]]:
            apps = {}
            for enabled, path in configs.items():
                os.environ["EXCHANGE_CONFIG"] = str(path)
                apps[enabled] = App(app_from_env())
                await apps[enabled].start()
            try:
                results: dict[bool, list[float]] = {True: [], False: []}
                for _ in range(rounds):
                    for enabled in (True, False):
                        bodies = [ex.form(t).encode() for t in idp.pool(n)]
                        results[enabled].append(await _cpu_per_granted(apps[enabled], bodies, headers))
                return results
            finally:
                for app in apps.values():
                    await app.stop()

        saved = sys.stderr
        sys.stderr = open(os.devnull, "w")
        try:
            results = asyncio.run(run())
        finally:
            sys.stderr.close()
            sys.stderr = saved
    on, off = statistics.median(results[True]), statistics.median(results[False])
    diffs = [a - b for a, b in zip(results[True], results[False], strict=True)]
    return [
        ["granted, metrics enabled (median of rounds)", report.us(on)],
        ["granted, metrics disabled (median of rounds)", report.us(off)],
        ["difference (median of per-round differences)", report.us(statistics.median(diffs))],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--number", type=int, default=200_000, help="calls per timed run of the instrumentation"
    )
    parser.add_argument("--repeat", type=int, default=7, help="timed runs; the best is reported")
    parser.add_argument("--requests", type=int, default=2000, help="granted exchanges per round, end to end")
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds per setting, end to end")
    args = parser.parse_args()
    number = max(1000, min(args.number, 5_000_000))
    rows = instrumentation(number, max(1, args.repeat))
    e2e = end_to_end(max(64, min(args.requests, 20_000)), max(1, min(args.rounds, 20)))
    print(
        "\n".join(
            [
                report.header(
                    "Metrics cost per /token request (in-process)",
                    f"instrumentation: best of {args.repeat} x {number:,} calls; end to end: {args.rounds} "
                    f"alternated rounds of {args.requests:,} granted exchanges through "
                    "`exchange.app:app_from_env` (SQLite store).",
                ),
                report.table(["the metrics code of one request", "cost"], rows),
                "",
                report.table(["end to end, CPU per request", "value"], e2e),
            ]
        )
    )


if __name__ == "__main__":
    main()
