"""End-to-end throughput of a real `exchange serve` (one worker): POST /token exchanges and GET /healthz.

For each store (embedded SQLite, then PostgreSQL) the bench writes a config that trusts a fake
identity provider (a key from tests/fixtures), starts `exchange serve` pinned to CPU 0, drives it from
CPU 1 at a fixed concurrency for a fixed time, and reports exchanges/s, p50/p99 latency, non-200
answers, the server's CPU use, and whether the store holds exactly one `granted` audit record per 200.

Load generator: wrk when it is on PATH (`apt-get install -y wrk`), else a Python asyncio generator
(raw streams, keep-alive, one connection per concurrent request). The bench prints which it used.
wrk stops at its deadline with requests in flight; the server may still commit their audit records, so
under wrk "granted rows - 200s" is allowed to be in [0, connections]. The Python generator lets every
in-flight request finish, so its check is exact.

Usage (the PostgreSQL run creates and drops its own database):
    .venv/bin/python bench/exchange_bench.py [--stores sqlite,postgres] [--concurrency 64]
        [--duration 10] [--generator auto|wrk|python] [--profile DIR] [--append-results]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## End-to-end exchange throughput"
SERVER_CPU, LOAD_CPU = 0, 1
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
MAX_DURATION = 120.0  # every load phase is bounded, whatever the flags say


# ---------------------------------------------------------------------------------------------------
# Load generation: wrk when present, else Python asyncio. Shared with bench/server_choice.py.


@dataclass
class LoadResult:
    generator: str
    command: str
    duration: float
    ok: int  # 200 answers
    non200: int  # any other status
    socket_errors: int
    p50_ms: float
    p99_ms: float
    server_cpu: float | None = None  # % of one core over the load phase
    server_core_busy: float | None = None  # % busy of the server's CPU, whoever used it (noisy machine)
    server_core_softirq: float | None = None  # of which kernel softirq (loopback TCP), charged to no process
    generator_cpu: float | None = None  # % of one core used by the load generator
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return (self.ok + self.non200) / self.duration if self.duration else 0.0

    @property
    def per_core(self) -> float | None:
        """Throughput per second of server CPU: what one fully-owned core would do (noisy machine)."""
        return self.rps / (self.server_cpu / 100.0) if self.server_cpu else None

    @property
    def errors(self) -> int:
        return self.non200 + self.socket_errors


def has_taskset() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pin(cpu: int) -> list[str]:
    """argv prefix that pins a command to one CPU, or nothing where that is not possible."""
    return ["taskset", "-c", str(cpu)] if has_taskset() else []


def _generator_note(generator: str, requested: str) -> str:
    if generator == "wrk":
        return ""
    return (
        " (Python asyncio, as requested)"
        if requested == "python"
        else " (wrk not found: Python asyncio fallback)"
    )


def pick_generator(requested: str) -> str:
    if requested == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if requested == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not on PATH (apt-get install -y wrk), or use --generator python")
    return requested


_WRK_SCRIPT = r"""
wrk.method = "%(method)s"
wrk.body = %(body)s
%(headers)s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; bad = 0 end
function response(status, headers, body)
  if status == 200 then ok = ok + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
  local o, b = 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); b = b + t:get("bad") end
  local e = summary.errors
  io.write(string.format("BENCH ok=%%d bad=%%d sock=%%d duration_us=%%d p50_us=%%d p99_us=%%d\n",
    o, b, e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_wrk(
    url: str,
    *,
    method: str,
    body: str,
    headers: dict[str, str],
    concurrency: int,
    duration: float,
    workdir: Path,
) -> LoadResult:
    script = workdir / f"wrk-{secrets.token_hex(4)}.lua"
    script.write_text(
        _WRK_SCRIPT
        % {
            "method": method,
            "body": _lua_string(body) if body else "nil",
            "headers": "\n".join(
                f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()
            ),
        }
    )
    argv = [
        *pin(LOAD_CPU),
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{int(duration)}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    m = re.search(r"BENCH ok=(\d+) bad=(\d+) sock=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+)", out)
    if m is None:
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    ok, bad, sock, dur, p50, p99 = map(int, m.groups())
    return LoadResult("wrk", shlex.join(argv), dur / 1e6, ok, bad, sock, p50 / 1e3, p99 / 1e3)


async def _python_load(
    host: str, port: int, raw: bytes, concurrency: int, duration: float, max_requests: int
) -> tuple[Counter[int], list[float], int, float]:
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    deadline = start + duration

    async def one_connection() -> None:
        nonlocal errors
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            errors += 1
            return
        try:
            # Finish the request in flight at the deadline: every answer the server sent is counted.
            while time.perf_counter() < deadline and len(latencies) < max_requests:
                t0 = time.perf_counter()
                writer.write(raw)
                status_line = await reader.readline()
                length = None
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if not status_line or length is None:
                    errors += 1
                    return
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                statuses[int(status_line.split()[1])] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(one_connection() for _ in range(concurrency)))
    return statuses, latencies, errors, time.perf_counter() - start


def run_python(
    url: str,
    *,
    method: str,
    body: str,
    headers: dict[str, str],
    concurrency: int,
    duration: float,
    max_requests: int = 5_000_000,
) -> LoadResult:
    hostport = url.split("//", 1)[1].split("/", 1)[0]
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    host, port = hostport.rsplit(":", 1)
    if host != "127.0.0.1":
        raise ValueError("loopback only")
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {hostport}",
        f"Content-Length: {len(body.encode())}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    raw = ("\r\n".join(lines) + "\r\n\r\n" + body).encode()
    statuses, lat, errors, took = asyncio.run(
        _python_load(host, int(port), raw, concurrency, duration, max_requests)
    )
    lat.sort()

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3 if lat else 0.0

    ok = statuses.get(200, 0)
    cmd = f"python asyncio generator (in bench process, {concurrency} keep-alive connections, {duration:g}s)"
    return LoadResult("python", cmd, took, ok, sum(statuses.values()) - ok, errors, pct(0.50), pct(0.99))


def run_load(
    generator: str,
    url: str,
    *,
    method: str = "GET",
    body: str = "",
    headers: dict[str, str] | None = None,
    concurrency: int,
    duration: float,
    workdir: Path,
    server_pid: int | None = None,
) -> LoadResult:
    duration = min(duration, MAX_DURATION)
    before = process_tree_cpu(server_pid) if server_pid else None
    core_before = cpu_busy(SERVER_CPU)
    gen_before = _generator_cpu(generator)
    t0 = time.monotonic()
    if generator == "wrk":
        result = run_wrk(
            url,
            method=method,
            body=body,
            headers=headers or {},
            concurrency=concurrency,
            duration=duration,
            workdir=workdir,
        )
    else:
        result = run_python(
            url, method=method, body=body, headers=headers or {}, concurrency=concurrency, duration=duration
        )
    wall = time.monotonic() - t0
    if before is not None and server_pid:
        after = process_tree_cpu(server_pid)
        result.server_cpu = 100.0 * (after - before) / wall if after is not None else None
    core_after = cpu_busy(SERVER_CPU)
    if core_before is not None and core_after is not None and core_after[1] > core_before[1]:
        span = core_after[1] - core_before[1]
        result.server_core_busy = 100.0 * (core_after[0] - core_before[0]) / span
        result.server_core_softirq = 100.0 * (core_after[2] - core_before[2]) / span
    result.generator_cpu = 100.0 * (_generator_cpu(generator) - gen_before) / wall
    return result


def _generator_cpu(generator: str) -> float:
    who = resource.RUSAGE_CHILDREN if generator == "wrk" else resource.RUSAGE_SELF
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def cpu_busy(cpu: int) -> tuple[int, int, int] | None:
    """(busy, total, softirq) jiffies of one CPU from /proc/stat."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + (v[4] if len(v) > 4 else 0)
                return sum(v[:8]) - idle, sum(v[:8]), v[6]
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def process_tree_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by a process and its descendants, from /proc."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        return None
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / tick


def wait_http(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0, method: str = "GET"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            data = b"a=b" if method == "POST" else None
            req = urllib.request.Request(
                url, data=data, method=method, headers={"Content-Type": "application/x-www-form-urlencoded"}
            )
            with urllib.request.urlopen(req, timeout=1.0) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not ready in {timeout}s:\n{log.read_text()[-3000:]}")


def start(
    argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(
            argv,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# ---------------------------------------------------------------------------------------------------
# The exchange scenario


def subject_token(alg: str) -> tuple[str, dict[str, object], str]:
    """A valid identity token from the fake IdP (tests/fixtures key), its JWKS, and its issuer."""
    sys.path.insert(0, str(ROOT))
    from tests.idp import FakeIdP

    idp = (
        FakeIdP("https://idp.example.com", "idp_rsa", "RS256")
        if alg == "RS256"
        else FakeIdP("https://idp-ec.example.com", "idp_ec", "ES256")
    )
    now = int(time.time())
    # Valid for the whole run; the service caps the purpose token's lifetime by it.
    return idp.token(exp=now + 3600, iat=now, auth_time=now - 10), idp.jwks(), idp.issuer


def write_config(
    folder: Path, port: int, store_url: str, jwks: dict[str, object], issuer: str, alg: str
) -> Path:
    import msgspec

    (folder / "idp-jwks.json").write_bytes(msgspec.json.encode(jwks))
    config = folder / "exchange.toml"
    config.write_text(f'''
issuer = "http://127.0.0.1:{port}"

[store]
url = "{store_url}"

[signing]
algorithm = "ES256"

[[trusted_issuers]]
issuer = "{issuer}"
jwks_file = "{folder / "idp-jwks.json"}"
audiences = ["purpose-exchange"]
algorithms = ["{alg}"]

[[clients]]
client_id = "bank-web"
auth_method = "none"
purposes = ["payments.approve"]

[purposes."payments.approve"]
audience = "https://payments.internal"
ttl = 60
rules = [
  {{ rule = "mfa" }},
  {{ rule = "claim", claim = "amr", contains = "mfa" }},
  {{ rule = "max_auth_age", seconds = 3600 }},
]
''')
    return config


def count_audit(store: str, where: str | Path, request_id: str) -> dict[str, int]:
    """Audit rows of one phase (by its X-Request-Id), per decision."""
    query = "SELECT decision, count(*) FROM audit_records WHERE request_id = {} GROUP BY decision"
    if store == "sqlite":
        with sqlite3.connect(where) as conn:
            return dict(conn.execute(query.format("?"), (request_id,)).fetchall())

    import asyncpg

    async def go() -> dict[str, int]:
        conn = await asyncpg.connect(str(where), timeout=10)
        try:
            return {r[0]: r[1] for r in await conn.fetch(query.format("$1"), request_id, timeout=30)}
        finally:
            await conn.close()

    return asyncio.run(go())


def settled_audit(store: str, where: str | Path, request_id: str) -> dict[str, int]:
    """Counts once the server has committed what was in flight (stable for two reads, bounded)."""
    last: dict[str, int] | None = None
    for _ in range(20):
        time.sleep(0.5)
        now = count_audit(store, where, request_id)
        if now == last:
            return now
        last = now
    return last or {}


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(sql, timeout=60)
    finally:
        await conn.close()


@dataclass
class Scenario:
    store: str
    name: str
    result: LoadResult
    audit: str = ""
    notes: list[str] = field(default_factory=list)

    def line(self, concurrency: int) -> str:
        r = self.result
        cpu = f"  server CPU {r.server_cpu:.0f}% -> {r.per_core:,.0f}/s per server core" if r.per_core else ""
        if r.server_core_busy is not None:
            cpu += f" (its core {r.server_core_busy:.0f}% busy, softirq {r.server_core_softirq:.0f}%)"
        if r.generator_cpu is not None:
            cpu += f"  generator CPU {r.generator_cpu:.0f}%"
        unit = "exchanges/s" if self.name == "exchange" else "req/s"
        return (
            f"{self.store:8} {self.name:8} c={concurrency:<4} {r.rps:9,.0f} {unit:11}  "
            f"p50 {r.p50_ms:7.2f} ms  "
            f"p99 {r.p99_ms:7.2f} ms  errors {r.errors} (non-200 {r.non200}, socket {r.socket_errors}){cpu}"
            + (f"  audit: {self.audit}" if self.audit else "")
        )


def run_store(
    store: str,
    args: argparse.Namespace,
    generator: str,
    token: str,
    jwks: dict[str, object],
    issuer: str,
    work: Path,
) -> tuple[list[Scenario], str]:
    folder = work / store
    folder.mkdir()
    port = free_port()
    env: dict[str, str] = {}
    db_name = None
    if store == "sqlite":
        where: str | Path = folder / "exchange.db"
        url = f"sqlite:///{where}"
    else:
        db_name = f"bench_exchange_{os.getpid()}_{secrets.token_hex(3)}"
        asyncio.run(_pg_admin(f'CREATE DATABASE "{db_name}"'))
        where = url = f"postgresql://postgres@127.0.0.1:5432/{db_name}"
        env["EXCHANGE_KEK"] = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    config = write_config(folder, port, url, jwks, issuer, args.subject_alg)
    argv = [
        *pin(SERVER_CPU),
        str(ROOT / ".venv/bin/exchange"),
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
    ]
    server_cmd = shlex.join(argv)
    log = folder / "server.log"
    proc = start(argv, log, env=env, cwd=folder)
    scenarios: list[Scenario] = []
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/readyz", proc, log)
        form = urlencode(
            {
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": token,
                "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
                "scope": "payments.approve",
                "client_id": "bank-web",
            }
        )
        phase = f"bench-{store}-{secrets.token_hex(4)}"
        post = {"Content-Type": "application/x-www-form-urlencoded"}
        load = {"concurrency": args.concurrency, "workdir": folder, "server_pid": proc.pid}

        # Warm up (imports, first connections, caches) under a request id the checks do not count.
        run_load(
            generator,
            f"{base}/token",
            method="POST",
            body=form,
            headers={**post, "X-Request-Id": "bench-warmup"},
            duration=args.warmup,
            **load,
        )
        run_load(generator, f"{base}/healthz", duration=args.warmup, **load)

        health = run_load(generator, f"{base}/healthz", duration=args.duration, **load)
        scenarios.append(Scenario(store, "healthz", health))

        profiler = None
        if args.profile:
            profiler = start_profiler(proc.pid, Path(args.profile) / f"{store}.collapsed", args.duration)
        result = run_load(
            generator,
            f"{base}/token",
            method="POST",
            body=form,
            headers={**post, "X-Request-Id": phase},
            duration=args.duration,
            **load,
        )
        if profiler is not None:
            profiler.wait(args.duration + 60)
        rows = settled_audit(store, where, phase)
        granted, denied = rows.get("granted", 0), rows.get("denied", 0)
        diff = granted - result.ok
        if generator == "python":
            ok = diff == 0 and denied == 0
            verdict = "OK (exact)" if ok else "MISMATCH"
        else:
            ok = 0 <= diff <= args.concurrency and denied == 0
            verdict = (
                f"OK (+{diff} committed while in flight at wrk's cutoff, <= {args.concurrency})"
                if ok
                else "MISMATCH"
            )
        audit = f"granted rows {granted} vs 200s {result.ok}, denied rows {denied}: {verdict}"
        scenarios.append(Scenario(store, "exchange", result, audit))
        if not ok:
            print(f"!! {store}: audit check failed: {audit}", file=sys.stderr)
    finally:
        stop(proc)
        if db_name is not None:
            asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
    return scenarios, server_cmd


def start_profiler(pid: int, out: Path, duration: float) -> subprocess.Popen[bytes]:
    """py-spy over the server and its worker, collapsed stacks (one line per stack with its count)."""
    spy = shutil.which("py-spy") or str(ROOT / ".venv/bin/py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        *pin(LOAD_CPU),
        spy,
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--gil",
        "--rate",
        "100",
        "--nolineno",
        "--duration",
        str(int(duration)),
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    print(f"# profiling: {shlex.join(argv)}")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


# ---------------------------------------------------------------------------------------------------
# In-process costs: each step of an exchange timed alone (CPU time, no HTTP), to read the profile against.


async def _micro(
    config: Path, form: str, token: str, n: int, log: Path, env: dict[str, str]
) -> list[tuple[str, float]]:
    import structlog

    from exchange.app import build_runtime, parse_form
    from exchange.config import load_settings
    from exchange.logging import configure_logging
    from rules import RuleContext

    saved, sys.stderr = sys.stderr, log.open("w")  # the service logs to stderr; keep it off the terminal
    try:
        configure_logging(json=True)
    finally:
        sys.stderr = saved
    os.environ.update(env)
    runtime = await build_runtime(load_settings(config))
    await runtime.auditor.start()
    ex = runtime.exchange
    trust, minter, policy = ex._trust, ex._minter, ex._policies["payments.approve"]
    body = form.encode()
    request = parse_form(body)
    now = time.time()
    subject = await trust.validate(token, "urn:ietf:params:oauth:token-type:id_token", now=now)
    claims = minter.claims(
        subject=subject.claims,
        audience="https://payments.internal",
        client_id="bank-web",
        purpose="payments.approve",
        ttl=60,
        now=now,
    )
    ctx = RuleContext(
        subject=subject.claims,
        issuer=subject.issuer,
        client_id="bank-web",
        purpose="payments.approve",
        audience="https://payments.internal",
        now=now,
        store=runtime.store,
    )
    audit_log = structlog.get_logger("exchange.audit")
    fields = {
        "request_id": "micro",
        "decision": "granted",
        "client_id": "bank-web",
        "issuer": subject.issuer,
        "sub": "alice",
        "purpose": "payments.approve",
        "audience": "https://payments.internal",
        "jti": claims.jti,
        "exp": claims.exp,
        "rules": [{"rule": "mfa", "outcome": "allow"}] * 3,
    }

    async def timed(label: str, fn: object, *, batch: int = 1) -> tuple[str, float]:
        for _ in range(max(1, n // 10)):  # warm
            r = fn()  # type: ignore[operator]
            if asyncio.iscoroutine(r):
                await r
        t0 = time.process_time()
        for _ in range(n // batch):
            r = fn()  # type: ignore[operator]
            if asyncio.iscoroutine(r):
                await r
        return label, 1e6 * (time.process_time() - t0) / (n // batch * batch)

    from schemas.records import AuditRecord, RuleOutcome

    records = [
        AuditRecord(
            time=now,
            request_id="micro",
            decision="granted",
            client_id="bank-web",
            issuer=subject.issuer,
            sub="alice",
            purpose="payments.approve",
            audience="https://payments.internal",
            jti=claims.jti,
            exp=claims.exp,
            rules=[RuleOutcome(rule="mfa", outcome="allow")] * 3,
        )
    ] * 64

    async def concurrent_audits() -> None:
        await asyncio.gather(*(runtime.auditor.record(r) for r in records))

    async def nothing() -> None:
        return None

    async def gather_floor() -> None:
        await asyncio.gather(*(nothing() for _ in range(64)))

    async def concurrent_handles() -> None:
        await asyncio.gather(*(ex.handle(request, None, "micro") for _ in range(64)))

    out = [
        await timed("parse_form (form body -> TokenRequest)", lambda: parse_form(body)),
        await timed(
            "SubjectTrust.validate (RS256 verify + checks)",
            lambda: trust.validate(token, "urn:ietf:params:oauth:token-type:id_token", now=now),
        ),
        await timed("PurposePolicy.evaluate (3 rules)", lambda: policy.evaluate(ctx)),
        await timed(
            "RuleContext(...) construction (deep-freezes the claims)",
            lambda: RuleContext(
                subject=subject.claims,
                issuer=subject.issuer,
                client_id="bank-web",
                purpose="payments.approve",
                audience="https://payments.internal",
                now=now,
                store=runtime.store,
            ),
        ),
        await timed(
            "Minter.claims",
            lambda: minter.claims(
                subject=subject.claims,
                audience="https://payments.internal",
                client_id="bank-web",
                purpose="payments.approve",
                ttl=60,
                now=now,
            ),
        ),
        await timed("Minter.sign (ES256)", lambda: minter.sign(claims)),
        await timed(
            "structlog audit line (log.info, JSON to a file)",
            lambda: audit_log.info("token_issued", **fields),
        ),
        await timed(
            "store.append_audit, batch of 64 (per record)",
            lambda: runtime.store.append_audit(records),
            batch=64,
        ),
        await timed(
            "Auditor.record, 64 concurrent: log line + group commit (per record)", concurrent_audits, batch=64
        ),
        await timed(
            "TokenExchange.handle, 64 concurrent, incl. audit commit (per exchange)",
            concurrent_handles,
            batch=64,
        ),
        await timed(
            "asyncio.gather of 64 trivial coroutines (per task: the harness floor)", gather_floor, batch=64
        ),
    ]
    # The floor under the two signature steps: the bare cryptography calls (no JOSE framing).
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    msg = token.rsplit(".", 1)[0].encode()
    ec_key, ed_key = ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()
    ec_sig, ed_sig = ec_key.sign(msg, ec.ECDSA(hashes.SHA256())), ed_key.sign(msg)
    keys = trust._issuers[subject.issuer].keys
    rsa_key = cast("rsa.RSAPublicKey", (await keys.get_key(subject.kid)).get_op_key("verify"))
    rsa_sig = base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "==")
    out += [
        await timed("bare cryptography: ES256 sign", lambda: ec_key.sign(msg, ec.ECDSA(hashes.SHA256()))),
        await timed("bare cryptography: Ed25519 sign", lambda: ed_key.sign(msg)),
        await timed(
            "bare cryptography: RS256 verify (2048-bit)",
            lambda: rsa_key.verify(rsa_sig, msg, padding.PKCS1v15(), hashes.SHA256()),
        ),
        await timed(
            "bare cryptography: ES256 verify",
            lambda: ec_key.public_key().verify(ec_sig, msg, ec.ECDSA(hashes.SHA256())),
        ),
        await timed("bare cryptography: Ed25519 verify", lambda: ed_key.public_key().verify(ed_sig, msg)),
    ]
    out += await _prototypes(timed, runtime, claims, subject, log)
    await runtime.auditor.stop()
    await runtime.store.close()
    return out


async def _prototypes(
    timed: Any, runtime: Any, claims: Any, subject: Any, log: Path
) -> list[tuple[str, float]]:
    """Sketches of cheaper ways to do three steps, timed the same way; bench-only, not the service's code."""
    import msgspec
    import structlog
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    from rules.context import freeze

    active = runtime.keyring.active
    private = active.key.get_op_key("sign")
    encode = msgspec.json.Encoder().encode
    b64 = base64.urlsafe_b64encode
    header_segment = b64(encode(active.header)).rstrip(b"=")  # once per key, not per token
    ecdsa = ec.ECDSA(hashes.SHA256())

    def sign_fast() -> str:
        signing_input = header_segment + b"." + b64(encode(claims)).rstrip(b"=")
        r, s_ = decode_dss_signature(private.sign(signing_input, ecdsa))
        return (
            signing_input + b"." + b64(r.to_bytes(32, "big") + s_.to_bytes(32, "big")).rstrip(b"=")
        ).decode()

    def freeze_fast(value: Any) -> Any:
        kind = type(value)
        if kind is dict or kind is MappingProxyType:
            return MappingProxyType({str(k): freeze_fast(v) for k, v in value.items()})
        if kind is list or kind is tuple:
            return tuple(freeze_fast(v) for v in value)
        if kind in (str, int, float, bool) or value is None:
            return value
        return freeze(value)  # anything unusual: the general path

    from schemas.records import AuditRecord, RuleOutcome

    record = AuditRecord(
        time=time.time(),
        request_id="micro",
        decision="granted",
        client_id="bank-web",
        issuer=subject.issuer,
        sub="alice",
        purpose="payments.approve",
        audience="https://payments.internal",
        jti=claims.jti,
        exp=claims.exp,
        rules=[RuleOutcome(rule="mfa", outcome="allow")] * 3,
    )
    audit_log = structlog.get_logger("exchange.audit")
    fh = log.open("a")

    def log_structlog() -> None:
        fields = msgspec.to_builtins(record)
        del fields["time"]
        audit_log.info("token_issued", **fields)

    def log_direct() -> None:
        fh.write(
            encode(
                {"event": "token_issued", "level": "info", "timestamp": record.time, "record": record}
            ).decode()
            + "\n"
        )

    return [
        await timed(
            "sketch: ES256 sign with a cached header segment, bare cryptography (vs Minter.sign)", sign_fast
        ),
        await timed("current: rules.context.freeze(subject claims)", lambda: freeze(subject.claims)),
        await timed("sketch: freeze with exact-type fast paths", lambda: freeze_fast(subject.claims)),
        await timed("current: Auditor.record's log line (to_builtins + structlog)", log_structlog),
        await timed("sketch: the audit record msgspec-encoded straight to the stream", log_direct),
    ]


def run_micro(
    store: str, args: argparse.Namespace, token: str, jwks: dict[str, object], issuer: str, work: Path
) -> list[str]:
    folder = work / f"micro-{store}"
    folder.mkdir()
    env: dict[str, str] = {}
    db_name = None
    url = f"sqlite:///{folder / 'exchange.db'}"
    if store == "postgres":
        db_name = f"bench_micro_{os.getpid()}_{secrets.token_hex(3)}"
        asyncio.run(_pg_admin(f'CREATE DATABASE "{db_name}"'))
        url = f"postgresql://postgres@127.0.0.1:5432/{db_name}"
        env["EXCHANGE_KEK"] = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    config = write_config(folder, 8080, url, jwks, issuer, args.subject_alg)
    form = urlencode(
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
            "scope": "payments.approve",
            "client_id": "bank-web",
        }
    )
    sys.path.insert(0, str(ROOT))
    try:
        rows = asyncio.run(_micro(config, form, token, args.micro, folder / "micro.log", env))
    finally:
        if db_name is not None:
            asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
    text = [
        f"# in-process CPU per call ({args.micro} calls each, {store} store, this process's CPU only"
        f"{'; PostgreSQL server CPU not included' if store == 'postgres' else ''}):"
    ]
    text += [f"  {us:8.1f} us  {label}" for label, us in rows]
    print("\n".join(text))
    return text


# ---------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured phase")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--subject-alg",
        choices=["RS256", "ES256"],
        default="RS256",
        help="the fake IdP's algorithm for the subject token (the service signs ES256)",
    )
    parser.add_argument(
        "--profile", metavar="DIR", help="record py-spy collapsed stacks of the exchange phase"
    )
    parser.add_argument("--micro", type=int, metavar="N", help="only time each step in-process, N calls each")
    parser.add_argument("--summarise", metavar="FILE", help="only summarise a collapsed-stacks file and exit")
    parser.add_argument("--append-results", action="store_true")
    args = parser.parse_args()
    if args.summarise:
        print(summarise_profile(Path(args.summarise)))
        return 0
    if not 1 <= args.concurrency <= 4096 or not 1 <= args.duration <= MAX_DURATION:
        parser.error(f"concurrency 1..4096, duration 1..{MAX_DURATION:g}")

    generator = pick_generator(args.generator)
    if has_taskset():
        os.sched_setaffinity(
            0, {LOAD_CPU}
        )  # the Python generator (and this script) stay off the server's CPU
    command = shlex.join([".venv/bin/python", "bench/exchange_bench.py", *sys.argv[1:]])
    print(f"# {command}")
    print(f"# load generator: {generator}" + _generator_note(generator, args.generator))
    print(
        f"# pinning: server CPU {SERVER_CPU}, generator CPU {LOAD_CPU}"
        if has_taskset()
        else "# pinning: none (taskset or a second CPU is missing)"
    )
    token, jwks, issuer = subject_token(args.subject_alg)

    if args.micro:
        if not 64 <= args.micro <= 100_000:
            parser.error("--micro 64..100000")
        text: list[str] = []
        with tempfile.TemporaryDirectory(prefix="exchange-micro-") as tmp:
            for store in [s.strip() for s in args.stores.split(",") if s.strip()]:
                text += run_micro(store, args, token, jwks, issuer, Path(tmp))
        if args.append_results:
            stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
            _append_section(
                [f"### In-process step costs, {stamp}", "", f"`{command}`", "", "```", *text, "```", ""]
            )
        return 0

    all_scenarios: list[Scenario] = []
    server_cmds: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="exchange-bench-") as tmp:
        for store in [s.strip() for s in args.stores.split(",") if s.strip()]:
            if store not in {"sqlite", "postgres"}:
                parser.error(f"unknown store {store!r}")
            scenarios, server_cmds[store] = run_store(store, args, generator, token, jwks, issuer, Path(tmp))
            print(f"# server ({store}): {server_cmds[store]}")
            for s in scenarios:
                print(f"#   load: {s.result.command}")
                print(s.line(args.concurrency))
            all_scenarios += scenarios
    profiles: list[str] = []
    if args.profile:
        for f in sorted(Path(args.profile).glob("*.collapsed")):
            profiles += [
                "",
                f"Profile of the {f.stem} exchange phase (py-spy, collapsed stacks in `{f}`):",
                "",
                "```",
                summarise_profile(f),
                "```",
            ]
        print("\n".join(profiles))
    if args.append_results:
        all_scenarios[-1].notes = profiles
        append_results(command, generator, args, all_scenarios, server_cmds)
    return (
        0
        if all("MISMATCH" not in s.audit for s in all_scenarios)
        and all(s.result.errors == 0 for s in all_scenarios)
        else 1
    )


# ---------------------------------------------------------------------------------------------------
# Profile summary, from py-spy's collapsed stacks ("frame;frame;... count").

# Each sample is charged to one category: the first rule below that its stack matches (a rule names
# frames, py-spy's "function (path)", anywhere in the stack), so "signing" holds all of Minter.sign
# (JSON, base64 and ECDSA) wherever its leaf is. With --gil only samples holding the GIL are kept, and
# time in C/Rust code (cryptography, msgspec, granian's send/receive) is charged to its Python caller.
# Leftovers go to the deepest of our own code or litestar, else to the event loop.
CATEGORIES = [
    ("mint: sign the purpose token (Minter.sign: JSON + base64 + ES256)", ("Minter.sign (",)),
    ("subject token: RS256 signature verify (joserfc verify_compact)", ("verify_compact (",)),
    ("subject token: parse, header and claim checks (SubjectTrust.validate)", ("SubjectTrust.validate (",)),
    ("audit: structlog JSON line (Auditor.record -> log.info)", ("structlog/",)),
    (
        "audit: group-commit writer and store (Auditor, store, driver)",
        ("exchange/audit.py", "exchange/store/", "asyncpg/", "sqlite3"),
    ),
    ("rules engine (PurposePolicy.evaluate and rules/)", ("rules/",)),
    ("mint: claims (Minter.claims)", ("Minter.claims (",)),
    ("form parsing (parse_form, urllib.parse)", ("parse_form (",)),
]
_ASGI_IO = ("Request.stream (", "capture_response_started (", "send_wrapper (", "Request.body (")
LEFTOVER = (
    "ASGI I/O: granian receive/send awaited by litestar",
    "service and handler code (service.py, app.py)",
    "litestar routing, middleware, response building",
    "asyncio event loop and granian glue",
)


def _category(frames: list[str]) -> str:
    for label, needles in CATEGORIES:
        if any(n in f for f in frames for n in needles):
            return label
    for f in reversed(frames):
        if any(n in f for n in _ASGI_IO):
            return LEFTOVER[0]
        if ("exchange/" in f or "schemas/" in f) and "exchange/cli.py" not in f:
            return LEFTOVER[1]
        if "litestar/" in f:
            return LEFTOVER[2]
    return LEFTOVER[3]


# Inclusive shares of a few functions, for orientation (a sample counts once per function).
INCLUSIVE = [
    ("POST /token handler (app.py token)", "token (exchange/app.py"),
    ("TokenExchange.handle (service.py)", "handle (exchange/service.py"),
    ("SubjectTrust.validate (trust.py)", "validate (exchange/trust.py"),
    ("Minter.sign (tokens.py)", "sign (exchange/tokens.py"),
    ("Auditor.record (audit.py)", "record (exchange/audit.py"),
    ("PurposePolicy.evaluate (rules/engine.py)", "evaluate (rules/engine.py"),
]


def _frames(stack: str) -> list[str]:
    # Drop py-spy's "process N:..." and "thread" pseudo-frames; shorten absolute paths.
    out = []
    for f in stack.split(";"):
        if f.startswith(("process ", "thread ")):
            continue
        out.append(re.sub(r"\((?:/[^()]*?/(?:site-packages|lib/python3\.\d+|main)/)", "(", f))
    return out


def summarise_profile(path: Path, top: int = 10) -> str:
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            stacks.append((_frames(stack), int(n)))
    total = sum(c for _, c in stacks)
    if not total:
        return "(no samples)"
    charged: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for frames, count in stacks:
        if frames:
            leaf[frames[-1]] += count
        for label, needle in INCLUSIVE:
            if any(needle in f for f in frames):
                inclusive[label] += count
        charged[_category(frames)] += count
    out = [f"{total} samples holding the GIL (server process tree); each charged to one category:"]
    out += [f"  {100 * c / total:5.1f}%  {label}" for label, c in charged.most_common()]
    out.append("inclusive (a sample counts once per function):")
    out += [f"  {100 * inclusive[label] / total:5.1f}%  {label}" for label, _ in INCLUSIVE]
    out.append(f"top {top} leaf frames (self time):")
    out += [f"  {100 * c / total:5.1f}%  {name}" for name, c in leaf.most_common(top)]
    return "\n".join(out)


def append_results(
    command: str,
    generator: str,
    args: argparse.Namespace,
    scenarios: list[Scenario],
    server_cmds: dict[str, str],
) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"### Run of {stamp}",
        "",
        f"`{command}`",
        "",
        f"Load generator: {generator}; server pinned to CPU {SERVER_CPU}, generator to CPU {LOAD_CPU}; "
        f"concurrency {args.concurrency}, {args.duration:g} s per phase, subject token {args.subject_alg}, "
        "purpose token ES256, 3 rules.",
        "",
    ]
    for store, cmd in server_cmds.items():
        lines.append(f"- server ({store}): `{cmd}`")
    lines += [
        "",
        "| store | scenario | throughput | per server CPU-second | p50 | p99 | errors "
        "| server CPU (core busy, softirq) | generator CPU | audit check |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in scenarios:
        r = s.result
        lines.append(
            f"| {s.store} | {'POST /token' if s.name == 'exchange' else 'GET /healthz'} | "
            f"{r.rps:,.0f}/s | {'?' if r.per_core is None else f'{r.per_core:,.0f}'} | "
            f"{r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms | {r.errors} | "
            f"{_pct(r.server_cpu)} ({_pct(r.server_core_busy)}, {_pct(r.server_core_softirq)}) | "
            f"{_pct(r.generator_cpu)} | {s.audit or '-'} |"
        )
    lines += ["", f"Load command per phase: `{scenarios[-1].result.command}` (script: POST form or GET)", ""]
    if scenarios and scenarios[-1].notes:
        lines += [
            "Profiling slows the server: these throughput figures are not comparable with unprofiled runs.",
            *scenarios[-1].notes,
            "",
        ]
    _append_section(lines)


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}%"


def _append_section(lines: list[str], section: str = SECTION) -> None:
    """Add to this bench's own section of RESULTS.md (created at the end if absent); others' untouched."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = "\n".join(lines) + "\n"
    if section not in text:
        RESULTS.write_text(text.rstrip("\n") + f"\n\n{section}\n\n" + block)
        return
    head, _, tail = text.partition(section)
    nxt = re.search(r"^## ", tail, flags=re.M)
    mine, rest = (tail[: nxt.start()], tail[nxt.start() :]) if nxt else (tail, "")
    RESULTS.write_text(head + section + mine.rstrip("\n") + "\n\n" + block + ("\n" + rest if rest else ""))


if __name__ == "__main__":
    sys.exit(main())
