"""The load generator: wrk (C, one thread, pinned to LOAD_CPUS) with a Lua script per phase.

Two kinds of phase: a fixed request (GET /healthz, or one POST body), or a pool of bodies taken in
turn, one per request (tens of thousands of distinct subject tokens). The script counts 200s and
the rest, and prints one parseable line. Every phase is bounded in time and talks to 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import resource
import secrets
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.procs import LOAD_CPUS, SERVER_CPUS, Process, core_jiffies, cpu_seconds, pin

MAX_DURATION = 900  # seconds: the RSS soak is ten minutes; nothing runs longer
WRK_THREADS = 1

_SCRIPT = r"""
local method, path, pool_file = %(method)s, %(path)s, %(pool)s
wrk.method = method
wrk.body = %(body)s
%(headers)s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  ok = 0; bad = 0
  if pool_file then
    reqs = {}
    for line in io.lines(pool_file) do
      reqs[#reqs + 1] = wrk.format(method, path, nil, line)
    end
    n = 0
  end
end
if pool_file then
  function request()
    n = n %% #reqs + 1
    return reqs[n]
  end
end
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
_RESULT = re.compile(r"BENCH ok=(\d+) bad=(\d+) sock=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+)")


@dataclass
class LoadResult:
    command: str
    duration: float
    ok: int  # 200 answers
    non200: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    server_cpu: float | None = None  # share of one core used by the server's process tree
    core_busy: float | None = None  # how busy the server's cores were, whoever used them
    softirq: float | None = None  # of which kernel softirq (loopback TCP), charged to no process
    generator_cpu: float | None = None

    @property
    def rps(self) -> float:
        return (self.ok + self.non200) / self.duration if self.duration else 0.0

    @property
    def per_cpu_second(self) -> float | None:
        """Requests per second of server CPU: what a core of its own would carry (shared machine)."""
        return self.rps / self.server_cpu if self.server_cpu else None

    @property
    def errors(self) -> int:
        return self.non200 + self.socket_errors

    def cpu_note(self) -> str:
        def pct(v: float | None) -> str:
            return "?" if v is None else f"{100 * v:.0f}%"

        return (
            f"server CPU {pct(self.server_cpu)} (its cores {pct(self.core_busy)} busy, softirq "
            f"{pct(self.softirq)}), wrk CPU {pct(self.generator_cpu)}"
        )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ensure_wrk() -> str:
    """wrk's path; installs the Debian package when it is missing (CI runs on a clean machine)."""
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "wrk"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
            subprocess.run(install, env=env, capture_output=True, timeout=600)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed and could not be installed: apt-get install -y wrk")
    return found


def _lua(value: str | None) -> str:
    if value is None:
        return "nil"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def run(
    url: str,
    *,
    concurrency: int,
    duration: float,
    workdir: Path,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: str | None = None,
    pool: Path | None = None,
    server: Process | None = None,
    server_cpus: str = SERVER_CPUS,
) -> LoadResult:
    """One wrk phase against `url`; the server's CPU (process tree) is read around it."""
    seconds = max(1, min(round(duration), MAX_DURATION))
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("load goes to loopback only")
    script = workdir / f"wrk-{secrets.token_hex(4)}.lua"
    script.write_text(
        _SCRIPT
        % {
            "method": _lua(method),
            "path": _lua(path),
            "pool": _lua(str(pool) if pool else None),
            "body": _lua(body),
            "headers": "\n".join(f"wrk.headers[{_lua(k)}] = {_lua(v)}" for k, v in (headers or {}).items()),
        }
    )
    argv = [*pin(LOAD_CPUS), ensure_wrk(), f"-t{WRK_THREADS}", f"-c{concurrency}", f"-d{seconds}s"]
    argv += ["--timeout", "10s", "--latency", "-s", str(script), url]
    pids = server.pids() if server else []
    cpu0 = cpu_seconds(pids) if pids else None
    core0 = core_jiffies(server_cpus)
    children0 = _children_cpu()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=seconds + 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    wall = time.monotonic() - t0
    # wrk is the child reaped in this window: its CPU is the growth of RUSAGE_CHILDREN.
    generator_cpu = (_children_cpu() - children0) / wall
    match = _RESULT.search(out.decode())
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.decode()[-2000:]}\n{out.decode()[-2000:]}")
    ok, bad, sock, dur, p50, p99 = map(int, match.groups())
    result = LoadResult(shlex.join(argv), dur / 1e6, ok, bad, sock, p50 / 1e3, p99 / 1e3)
    result.generator_cpu = generator_cpu
    if cpu0 is not None:
        result.server_cpu = (cpu_seconds(pids) - cpu0) / wall
    core1 = core_jiffies(server_cpus)
    if core1[1] > core0[1]:
        span = core1[1] - core0[1]
        result.core_busy = (core1[0] - core0[0]) / span
        result.softirq = (core1[2] - core0[2]) / span
    return result
