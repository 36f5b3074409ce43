"""The service's metrics: what is counted, under which names and labels, and the per-request step clock.

Every name here is a public contract (docs/OPERATIONS.md, deploy/grafana-dashboard.json): add, never
rename. Label values come from configured sets only: a purpose or client id the configuration does not
know becomes `(unknown)`, so a caller cannot grow the series count by inventing names; denial codes
(set by rules, not by callers) are capped at MAX_DENIAL_CODES distinct values, then `(other)`.

Cost per /token request (bench/metrics_cost.py measures it): one `Steps` object, two clock reads per
step, one dict update for the outcome and one bucket increment per step and for the total.
"""

from __future__ import annotations

import os
import resource
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from pathlib import Path
from time import perf_counter
from typing import Final

from exchange.keys import PublishedKey
from exchange.metrics import HistogramSeries, Registry
from exchange.verify.jwks import JWKSCache, KeySource

UNKNOWN: Final = "(unknown)"
OTHER: Final = "(other)"
MAX_DENIAL_CODES: Final = 64
PREFIX: Final = "purpose_exchange_"

CLIENT_AUTH, TRUST, RULES, MINT, AUDIT = range(5)
STEP_NAMES: Final = ("client_auth", "trust", "rules", "mint", "audit")
BATCHES: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Steps:
    """The step clock of one request: `with steps(TRUST): ...` observes the step's duration in its
    histogram (`series`, one per step; None: metrics are off), even when the step raises. One object
    serves every step of the request, so timing a step allocates nothing."""

    __slots__ = ("_series", "_step", "_t", "started")

    def __init__(self, series: tuple[HistogramSeries, ...] | None = None) -> None:
        self.started = perf_counter()
        self._series = series
        self._step = 0
        self._t = 0.0

    def __call__(self, step: int) -> Steps:
        self._step = step
        self._t = perf_counter()
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: object, tb: object) -> None:
        if self._series is not None:
            spent = perf_counter() - self._t
            series = self._series[self._step]  # HistogramSeries.observe, inlined: this is per step
            series.counts[bisect_left(series.bounds, spent)] += 1
            series.sum += spent


class ServiceMetrics:
    """The exchange's metric families in one registry, and the methods the service calls to count."""

    def __init__(self, *, purposes: Iterable[str] = (), clients: Iterable[str] = ()) -> None:
        self.registry = r = Registry()
        self._exchanges = r.counter(
            PREFIX + "exchanges_total",
            "Token exchanges answered, by purpose, client, outcome (granted or the OAuth error) and denial.",
            ("purpose", "client", "outcome", "denial"),
        ).values
        duration = r.histogram(
            PREFIX + "exchange_duration_seconds",
            "Time to answer POST /token (from the parsed form to the committed audit record), by decision.",
            ("decision",),
        )
        self._granted_duration = duration.child(("granted",))
        self._denied_duration = duration.child(("denied",))
        steps = r.histogram(
            PREFIX + "step_duration_seconds", "Time spent in each step of an exchange.", ("step",)
        )
        #: The step histograms, in step order: what `Steps` observes into.
        self.step_series = tuple(steps.child((name,)) for name in STEP_NAMES)
        self.store_errors = r.counter(
            PREFIX + "store_errors_total",
            "Store calls that failed (unreachable, timed out), by operation.",
            ("operation",),
        )
        self._batch = r.histogram(
            PREFIX + "audit_batch_size", "Audit records per committed batch (group commit).", buckets=BATCHES
        ).child()
        self.audit_queue = r.gauge(PREFIX + "audit_queue_depth", "Audit records waiting for their batch.")
        self.signing_key_age = r.gauge(
            PREFIX + "signing_key_age_seconds",
            "Age of each published signing key, by kid and state (current signs; next and previous are only"
            " published).",
            ("kid", "state"),
            merge="max",
        )
        self.reloads = r.counter(
            PREFIX + "config_reloads_total", "Configuration reloads, by result (ok, error).", ("result",)
        )
        self.config_loaded = r.gauge(
            PREFIX + "config_last_reload_timestamp_seconds",
            "When the configuration in use was loaded (Unix time).",
            merge="max",
        )
        self.info = r.gauge(
            PREFIX + "build_info", "Always 1; the labels name the version.", ("version",), merge="max"
        )
        self._jwks_fetches = r.gauge(
            PREFIX + "jwks_fetches_total",
            "JWKS fetch attempts per key source (trusted issuer, or client:ID), by result (ok, error).",
            ("issuer", "result"),
            total=True,
        )
        self._jwks_suppressed = r.gauge(
            PREFIX + "jwks_refetch_suppressed_total",
            "Unknown kids not looked for again because the last fetch was within the refetch cooldown.",
            ("issuer",),
            total=True,
        )
        self._jwks_age = r.gauge(
            PREFIX + "jwks_last_success_age_seconds",
            "Seconds since the key source's JWKS was last fetched successfully (absent: never).",
            ("issuer",),
            merge="max",
        )
        self._jwks_usable = r.gauge(
            PREFIX + "jwks_usable",
            "1 while the key source has keys it may use (fresh, or stale within its bound), else 0.",
            ("issuer",),
            merge="max",
        )
        _process_metrics(r)
        self._denials: set[str] = set()
        self.known(purposes=purposes, clients=clients)

    def known(self, *, purposes: Iterable[str], clients: Iterable[str]) -> None:
        """The configured purposes and clients: the only values those labels may take."""
        self._purposes = frozenset(purposes)
        self._clients = frozenset(clients)

    def exchange_done(
        self, purpose: str | None, client: str | None, outcome: str, denial: str | None, steps: Steps
    ) -> None:
        """Count one answered exchange and its step times. The hot path: keep it short."""
        end = perf_counter()
        if denial is not None and denial not in self._denials:
            if len(self._denials) < MAX_DENIAL_CODES:
                self._denials.add(denial)
            else:
                denial = OTHER
        key = (
            purpose if purpose in self._purposes else UNKNOWN,
            client if client in self._clients else UNKNOWN,
            outcome,
            denial or "",
        )
        exchanges = self._exchanges
        exchanges[key] = exchanges.get(key, 0.0) + 1.0
        total = self._granted_duration if outcome == "granted" else self._denied_duration
        total.observe(end - steps.started)

    def audit_batch(self, size: int) -> None:
        self._batch.observe(size)

    def watch_audit_queue(self, depth: Callable[[], int]) -> None:
        self.registry.on_collect(lambda: self.audit_queue.set((), depth()))

    def watch_signing_keys(
        self, keys: Callable[[], Iterable[PublishedKey]], clock: Callable[[], float]
    ) -> None:
        def collect() -> None:
            now = clock()
            self.signing_key_age.values = {(k.kid, k.state): max(0.0, now - k.created_at) for k in keys()}

        self.registry.on_collect(collect)

    def watch_key_sources(self, sources: Callable[[], Iterable[tuple[str, KeySource]]]) -> None:
        """Report each fetched key source's counters and freshness (sources that read a file have none)."""

        def collect() -> None:
            fetches: dict[tuple[str, ...], float] = {}
            suppressed: dict[tuple[str, ...], float] = {}
            ages: dict[tuple[str, ...], float] = {}
            usable: dict[tuple[str, ...], float] = {}
            for name, source in sources():
                if not isinstance(source, JWKSCache):
                    continue
                state = source.state()
                fetches[(name, "ok")] = float(state.fetches - state.failures)
                fetches[(name, "error")] = float(state.failures)
                suppressed[(name,)] = float(state.refetches_suppressed)
                usable[(name,)] = 1.0 if state.state != "unusable" else 0.0
                if state.last_success_age is not None:
                    ages[(name,)] = state.last_success_age
            self._jwks_fetches.values, self._jwks_suppressed.values = fetches, suppressed
            self._jwks_age.values, self._jwks_usable.values = ages, usable

        self.registry.on_collect(collect)


def _process_metrics(r: Registry) -> None:
    """The standard process_* families (Prometheus client conventions), one series per worker process."""
    cpu = r.gauge(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        merge="pid",
        total=True,
    )
    rss = r.gauge("process_resident_memory_bytes", "Resident memory size in bytes.", merge="pid")
    vms = r.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", merge="pid")
    fds = r.gauge("process_open_fds", "Number of open file descriptors.", merge="pid")
    max_fds = r.gauge("process_max_fds", "Maximum number of open file descriptors.", merge="pid")
    start = r.gauge(
        "process_start_time_seconds", "Start time of the process since unix epoch in seconds.", merge="pid"
    )
    stat = Path("/proc/self/stat")
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    page = resource.getpagesize()
    boot = _boot_time()
    started = time.time()

    def collect() -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu.set((), usage.ru_utime + usage.ru_stime)
        max_fds.set((), float(resource.getrlimit(resource.RLIMIT_NOFILE)[0]))
        try:
            # Fields after the command name (which may hold spaces): see proc(5).
            fields = stat.read_text().rpartition(")")[2].split()
            vms.set((), float(fields[20]))
            rss.set((), float(fields[21]) * page)
            start.set((), boot + float(fields[19]) / ticks if boot else started)
            fds.set((), float(len(os.listdir("/proc/self/fd"))))
        except (OSError, IndexError, ValueError):  # not Linux: CPU time and the limit only
            start.set((), started)

    r.on_collect(collect)


def _boot_time() -> float:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0
