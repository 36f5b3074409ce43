"""What the ambassador adds: latency and throughput through it versus calling the upstream directly.

Everything on 127.0.0.1: a tiny upstream (uvicorn, one process) answering a small JSON body, and the
ambassador (`exchange ambassador`, one worker) in front of it with a JWKS file and a route table.
Three paths are measured with the same httpx client:
  direct     client -> upstream
  open       client -> ambassador (open route: proxying only) -> upstream
  verified   client -> ambassador (ES256 purpose token verified, identity headers added) -> upstream

    .venv/bin/python bench/ambassador_bench.py [--generator auto|wrk|httpx] [--seconds 5]
        [--requests 2000] [--concurrency 32] [--server granian|uvicorn] [--markdown]

Latency is measured one request at a time (p50/p99), throughput with `--concurrency` requests in
flight. The load generator is wrk when installed (C, so it does not compete for the GIL of what it
measures; runs bounded by `--seconds`), else an httpx client (bounded by `--requests`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from joserfc import jws
from joserfc.jwk import ECKey

ROOT = Path(__file__).resolve().parents[1]
ISSUER = "https://exchange.bench"
AUDIENCE = "https://payments.internal"
PURPOSE = "payments.approve"
BODY = json.dumps({"payment_id": "p-1001", "status": "approved", "amount": "250.00"}).encode()


async def upstream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The upstream: drains the request, answers a fixed small JSON body."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server on {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


async def latency(client: httpx.AsyncClient, url: str, headers: dict[str, str], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        response = await client.get(url, headers=headers)
        samples.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise SystemExit(f"{url}: HTTP {response.status_code} {response.text}")
    return samples


async def throughput(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], n: int, concurrency: int
) -> float:
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            response = await client.get(url, headers=headers)
            if response.status_code != 200:
                raise SystemExit(f"{url}: HTTP {response.status_code}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - started)


async def measure(paths: dict[str, tuple[str, dict[str, str]]], n: int, concurrency: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results: dict[str, Any] = {}
    async with httpx.AsyncClient(limits=limits, timeout=10, trust_env=False) as client:
        for url, headers in paths.values():  # warm up connections, JWKS, caches
            await latency(client, url, headers, 50)
        for name, (url, headers) in paths.items():
            samples = sorted(await latency(client, url, headers, n))
            results[name] = {
                "p50": statistics.median(samples),
                "p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
                "rps": await throughput(client, url, headers, n, concurrency),
            }
    return results


_WRK_LATENCY = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def wrk(url: str, headers: dict[str, str], connections: int, seconds: int) -> dict[str, float]:
    """One wrk run (C, outside the GIL of everything measured): requests/s and latency percentiles."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*args, url], capture_output=True, text=True, timeout=seconds + 30, check=True
    ).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"{url}: wrk saw non-2xx answers:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = {f"p{p}": float(v) * _WRK_UNITS[unit] for p, v, unit in _WRK_LATENCY.findall(out)}
    return {"rps": rps, **latency}


def measure_wrk(
    paths: dict[str, tuple[str, dict[str, str]]], concurrency: int, seconds: int
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for url, headers in paths.values():  # warm up connections, JWKS, caches
        wrk(url, headers, 1, 1)
    for name, (url, headers) in paths.items():
        single = wrk(url, headers, 1, seconds)  # one request at a time: latency
        loaded = wrk(url, headers, concurrency, seconds)  # `concurrency` in flight: throughput
        results[name] = {"p50": single["p50"], "p99": single["p99"], "rps": loaded["rps"]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement (bounded)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--server", choices=["granian", "uvicorn"], default="granian", help="ambassador's server"
    )
    parser.add_argument(
        "--generator",
        choices=["auto", "wrk", "httpx"],
        default="auto",
        help="load generator (auto: wrk if found)",
    )
    parser.add_argument("--max-connections", type=int, default=32, help="ambassador's upstream pool size")
    parser.add_argument("--seconds", type=int, default=5, help="wrk: seconds per run (bounded)")
    parser.add_argument("--markdown", action="store_true", help="print a RESULTS.md section")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve_upstream:
        import uvicorn

        uvicorn.run(
            upstream_app, host="127.0.0.1", port=options.serve_upstream, log_level="warning", access_log=False
        )
        return
    n = min(options.requests, 20_000)
    seconds = min(options.seconds, 60)
    generator = options.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "httpx"

    key = ECKey.generate_key("P-256", auto_kid=True)
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "exp": now + 900, "iat": now, "jti": "bench",
              "client_id": "bank-web", "scope": PURPOSE, "amr": ["pwd", "mfa"]}  # fmt: skip
    token = jws.serialize_compact(
        {"alg": "ES256", "typ": "at+jwt", "kid": key.kid}, json.dumps(claims), key, algorithms=["ES256"]
    )
    upstream_port, ambassador_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        jwks_file = Path(tmp) / "jwks.json"
        jwks_file.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
        routes_file = Path(tmp) / "routes.toml"
        routes_file.write_text(
            f'[[route]]\nprefix = "/open"\nopen = true\n\n[[route]]\nprefix = "/"\npurpose = "{PURPOSE}"\n'
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        upstream = subprocess.Popen(
            [sys.executable, __file__, "--serve-upstream", str(upstream_port)], cwd=ROOT, env=env
        )
        ambassador = subprocess.Popen(
            [sys.executable, "-m", "exchange.cli.ambassador", "--listen", f"127.0.0.1:{ambassador_port}",
             "--upstream", f"http://127.0.0.1:{upstream_port}", "--issuer", ISSUER, "--audience", AUDIENCE,
             "--jwks-file", str(jwks_file), "--routes", str(routes_file), "--server", options.server,
             "--max-connections", str(options.max_connections)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(upstream_port, upstream)
            wait_for(ambassador_port, ambassador)
            auth = {"Authorization": f"Bearer {token}"}
            paths = {
                "direct": (f"http://127.0.0.1:{upstream_port}/payments/p-1001/approve", auth),
                "open": (f"http://127.0.0.1:{ambassador_port}/open/payments/p-1001/approve", auth),
                "verified": (f"http://127.0.0.1:{ambassador_port}/payments/p-1001/approve", auth),
            }
            if generator == "wrk":
                results = measure_wrk(paths, options.concurrency, seconds)
            else:
                results = asyncio.run(measure(paths, n, options.concurrency))
        finally:
            for process in (ambassador, upstream):
                process.terminate()
                process.wait(timeout=10)

    budget = f"--seconds {seconds}" if generator == "wrk" else f"--requests {n}"
    command = (
        f".venv/bin/python bench/ambassador_bench.py --generator {generator} "
        f"--concurrency {options.concurrency} --server {options.server} "
        f"--max-connections {options.max_connections} {budget}"
    )
    setting = (
        f"Python {platform.python_version()}, {os.cpu_count()} cores, loopback; upstream uvicorn "
        f"(1 process), ambassador {options.server} (1 worker, upstream pool {options.max_connections}); "
        + (
            f"wrk, {seconds} s per figure (latency with 1 connection, throughput with {options.concurrency})"
            if generator == "wrk"
            else f"httpx client, {n} requests per figure"
        )
    )
    direct = results["direct"]
    if options.markdown:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(f"## Ambassador overhead ({stamp})\n\n`{command}`\n\n{setting}\n")
        c = options.concurrency
        print(f"| path | p50 latency | p99 latency | added p50 | throughput (c={c}) | vs direct |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, r in results.items():
            added = (r["p50"] - direct["p50"]) * 1000
            print(
                f"| {name} | {r['p50'] * 1000:.2f} ms | {r['p99'] * 1000:.2f} ms | {added:+.2f} ms "
                f"| {r['rps']:,.0f} req/s | {r['rps'] / direct['rps']:.2f}x |"
            )
        return
    print(command)
    print(setting)
    for name, r in results.items():
        print(
            f"  {name:<9} p50 {r['p50'] * 1000:6.2f} ms  p99 {r['p99'] * 1000:6.2f} ms  "
            f"added p50 {(r['p50'] - direct['p50']) * 1000:+6.2f} ms  {r['rps']:8,.0f} req/s  "
            f"({r['rps'] / direct['rps']:.2f}x direct)"
        )


if __name__ == "__main__":
    main()
