"""Every benchmark under bench/ runs, end to end, for a second or two: the scripts keep working.

No speed is asserted (speed is measured by running the benches themselves, see bench/README.md):
each smoke run must exit 0 and print its table, its exact command and, where the bench checks
them, clean results (no errors, every 200 with its committed audit record). The runs are started
together and awaited per test, so the module costs about as long as its slowest bench.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
PYTHON = sys.executable

pytestmark = [pytest.mark.bench, pytest.mark.postgres]


def _peer_installable() -> str | None:
    """None when the peer (oidc-provider) is installed or can be; else why not."""
    sys.path.insert(0, str(BENCH))
    try:
        from harness import peer

        peer.install()
    except peer.PeerUnavailable as exc:
        return str(exc)
    finally:
        sys.path.remove(str(BENCH))
    return None


def _npm_reaches_registry() -> bool:
    try:
        return subprocess.run(["npm", "ping"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


SMOKE = {
    "exchange": [
        "exchange_bench.py",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--pool",
        "300",
        "--peer",
        "on",
        "--profile",
        "{tmp}/prof",
    ],
    "soak_two_workers": [
        "exchange_bench.py",
        "--soak",
        "5",
        "--warmup",
        "0",
        "--pool",
        "200",
        "--stores",
        "sqlite",
        "--workers",
        "2",
    ],
    "micro": ["exchange_bench.py", "--micro", "64", "--stores", "sqlite"],
    "verify": ["verify_bench.py", "--number", "50", "--repeat", "1"],
    # valgrind is a tool of every machine we run on, like wrk: without it this run fails, not skips.
    "verify_instructions": ["verify_bench.py", "--instructions", "--number", "3"],
    "ambassador": ["ambassador_bench.py", "--seconds", "1", "--warmup", "0"],
    "audit": ["audit_bench.py", "--duration", "1", "--concurrency", "4", "--pool", "200"],
    "server_choice": ["server_choice.py", "--post", "--rounds", "1", "--duration", "1", "--warmup", "0"],
    "metrics_cost": [
        "metrics_cost.py",
        "--number",
        "2000",
        "--repeat",
        "1",
        "--requests",
        "64",
        "--rounds",
        "1",
    ],
}


@pytest.fixture(scope="module")
def runs(
    pg_server_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """All smoke runs, started at once (each bench pins its own processes; none asserts speed)."""
    why_not = _peer_installable()
    if why_not is not None and not _npm_reaches_registry():
        pytest.skip(f"the peer cannot be installed and npm cannot reach its registry: {why_not}")
    assert why_not is None, why_not
    tmp = tmp_path_factory.mktemp("bench-smoke")
    env = {**os.environ, "PURPOSE_EXCHANGE_TEST_DSN": pg_server_dsn}
    started = {
        name: subprocess.Popen(
            [PYTHON, str(BENCH / argv[0]), *(a.format(tmp=tmp) for a in argv[1:])],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, argv in SMOKE.items()
    }
    yield started
    for proc in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _finished(runs: dict[str, subprocess.Popen[str]], name: str) -> str:
    proc = runs[name]
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{out[-6000:]}"
    assert f"`.venv/bin/python bench/{SMOKE[name][0]} " in out, "the exact command is printed with the result"
    return out


class TestSmoke:
    def test_metrics_cost_prints_the_instrumentation_and_the_end_to_end_difference(
        self, runs: dict[str, subprocess.Popen[str]]
    ) -> None:
        out = _finished(runs, "metrics_cost")
        assert "| granted (5 steps, outcome, 6 histogram observations) |" in out
        assert "| difference (median of per-round differences) |" in out

    def test_exchange_bench_prints_ours_limit_and_peer_in_one_table_with_audit_checked(
        self, runs: dict[str, subprocess.Popen[str]]
    ) -> None:
        out = _finished(runs, "exchange")
        for row in (
            "ours (postgres): GET /healthz",
            "limit: 1 / (healthz + verify + sign)",
            "**ours (postgres): POST /token**",
            "**ours / limit (postgres)**",
            "**ours / peer (postgres)**",
            "POST /token p99 at 4 connections",
            "peer oidc-provider",
            "peer: p99 at 4 connections",
        ):
            assert row in out
        assert "in flight at cutoff), 0 denied" in out and "— OK" in out
        assert "PostgreSQL per exchange:" in out
        assert "by step of the request" in out and "by module of the leaf frame" in out

    def test_soak_mode_reports_rss_first_and_last_window_with_two_workers(
        self, runs: dict[str, subprocess.Popen[str]]
    ) -> None:
        out = _finished(runs, "soak_two_workers")
        assert "RSS, first" in out and "RSS, last" in out and "growth" in out
        assert "--workers 2" in out and "— OK" in out

    def test_micro_times_each_outcome_in_process_through_the_app_factory(
        self, runs: dict[str, subprocess.Popen[str]]
    ) -> None:
        out = _finished(runs, "micro")
        assert "POST /token, granted (3 rules, mint, audit)" in out
        assert "public verifier: PurposeTokenVerifier.verify" in out

    def test_verify_bench_compares_ours_raw_pyjwt_and_joserfc(
        self, runs: dict[str, subprocess.Popen[str]]
    ) -> None:
        out = _finished(runs, "verify")
        assert "| ES256 |" in out and "| RS256 |" in out

    def test_verify_bench_counts_instructions_per_call_under_callgrind(
        self, runs: dict[str, subprocess.Popen[str]]
    ) -> None:
        out = _finished(runs, "verify_instructions")
        assert "instructions per call (callgrind)" in out
        for alg in ("ES256", "RS256"):
            row = re.search(rf"^\| {alg} \| ([0-9.]+)k \|((?: \+[0-9.]+k \([0-9.]+x\) \|){{4}})$", out, re.M)
            assert row is not None, out
            # The markers fell where they should: the raw check is hundreds of thousands of
            # instructions (RSA-2048 ~340k, P-256 ~865k), and every candidate does more than it.
            assert float(row.group(1)) > 100
            assert row.group(2).count("+") == 4

    def test_ambassador_bench_measures_five_routes(self, runs: dict[str, subprocess.Popen[str]]) -> None:
        out = _finished(runs, "ambassador")
        for route in ("| direct |", "| nginx |", "| open |", "| verified |", "| gateway |"):
            assert route in out

    def test_audit_bench_reports_commits_and_database_cost(
        self, runs: dict[str, subprocess.Popen[str]]
    ) -> None:
        out = _finished(runs, "audit")
        assert "| postgres | 4 |" in out and "| OK |" in out

    def test_server_choice_post_floor_runs_three_apps(self, runs: dict[str, subprocess.Popen[str]]) -> None:
        out = _finished(runs, "server_choice")
        assert "granian + bare ASGI POST" in out
