"""Lean Prometheus metrics: counters, gauges and histograms as plain Python numbers, rendered in the
text exposition format (version 0.0.4) at scrape time.

Why not prometheus-client: every `labels(...).inc()` there takes a lock and validates labels, and its
multi-process mode writes an mmap per increment; /token would pay several microseconds per request.
Here an event loop owns its registry (no locks: one thread), the hot path is a dict update or a list
increment, and everything else (rendering, merging) happens when someone scrapes.

Several worker processes: each writes a snapshot of its registry (`snapshot()`, msgspec JSON) to the
server's run directory every second; a scrape merges the snapshots (`merge`): counters and histograms
add up (a dead worker's last snapshot still counts, so totals never go down), gauges combine as
declared (`sum`, `max`, or one series per live worker with a `pid` label).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Literal

import msgspec

Key = tuple[str, ...]
GaugeMerge = Literal["sum", "max", "pid"]
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; /token steps take tens of microseconds (mint, trust) to tens of milliseconds (audit commit).
LATENCY_BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class Counter:
    """A counter family: `inc(key)` with the label values in `labels` order."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.labels = name, help, tuple(labels)
        self.values: dict[Key, float] = {}

    def inc(self, key: Key = (), amount: float = 1.0) -> None:
        values = self.values
        values[key] = values.get(key, 0.0) + amount


class Gauge:
    """A value read, not counted: usually set by a collector just before a scrape or snapshot.

    `total=True` declares a monotonic total the process keeps by itself (CPU seconds): exposed as a
    counter, merged like a gauge (a dead process's series goes with it).
    """

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        *,
        merge: GaugeMerge = "sum",
        total: bool = False,
    ) -> None:
        self.name, self.help, self.labels, self.merge = name, help, tuple(labels), merge
        self.kind = "counter" if total else "gauge"
        self.values: dict[Key, float] = {}

    def set(self, key: Key, value: float) -> None:
        self.values[key] = value


class HistogramSeries:
    """One labelled histogram: per-bucket counts (not cumulative; the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs in that bucket (`le` is inclusive).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Histogram:
    kind = "histogram"

    def __init__(
        self, name: str, help: str, labels: Sequence[str] = (), *, buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        self.name, self.help, self.labels = name, help, tuple(labels)
        self.bounds = tuple(sorted(buckets))
        self.series: dict[Key, HistogramSeries] = {}

    def child(self, key: Key = ()) -> HistogramSeries:
        """The series for these label values; hot paths look it up once and keep it."""
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = HistogramSeries(self.bounds)
        return series


Metric = Counter | Gauge | Histogram


class Registry:
    """The metric families of one process, and the collectors that refresh gauges before a scrape."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._collectors: list[Callable[[], None]] = []

    def add(self, metric: Metric) -> Any:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is registered twice")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return self.add(Counter(name, help, labels))  # type: ignore[no-any-return]

    def gauge(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        *,
        merge: GaugeMerge = "sum",
        total: bool = False,
    ) -> Gauge:
        return self.add(Gauge(name, help, labels, merge=merge, total=total))  # type: ignore[no-any-return]

    def histogram(
        self, name: str, help: str, labels: Sequence[str] = (), *, buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        return self.add(Histogram(name, help, labels, buckets=buckets))  # type: ignore[no-any-return]

    def on_collect(self, collector: Callable[[], None]) -> None:
        """`collector()` runs before every scrape and snapshot (gauges that are read, not counted)."""
        self._collectors.append(collector)

    def collect(self) -> None:
        for collector in self._collectors:
            collector()

    def snapshot(self, pid: int) -> Snapshot:
        """Everything this process has counted, for another process to merge."""
        self.collect()
        families = []
        for m in self._metrics.values():
            fam = FamilySnapshot(name=m.name, kind=m.kind, help=m.help, labels=list(m.labels), series=[])
            if isinstance(m, Histogram):
                fam.bounds = list(m.bounds)
                fam.series = [
                    SeriesSnapshot(list(k), counts=s.counts[:], sum=s.sum) for k, s in m.series.items()
                ]
            else:
                fam.merge = m.merge if isinstance(m, Gauge) else None
                fam.series = [SeriesSnapshot(list(k), value=v) for k, v in m.values.items()]
            families.append(fam)
        return Snapshot(pid=pid, families=families)


class SeriesSnapshot(msgspec.Struct, array_like=True, omit_defaults=True):
    labels: list[str]
    value: float = 0.0
    counts: list[int] | None = None
    sum: float = 0.0


class FamilySnapshot(msgspec.Struct, omit_defaults=True):
    name: str
    kind: str
    help: str
    labels: list[str]
    series: list[SeriesSnapshot]
    merge: str | None = None
    bounds: list[float] | None = None


class Snapshot(msgspec.Struct):
    pid: int
    families: list[FamilySnapshot]


SNAPSHOT_ENCODER: Final = msgspec.json.Encoder()
SNAPSHOT_DECODER: Final = msgspec.json.Decoder(Snapshot)


def merge(snapshots: Iterable[Snapshot], *, alive: Callable[[int], bool]) -> list[FamilySnapshot]:
    """One view of several processes' snapshots (the module docstring says how each kind adds up)."""
    merged: dict[str, FamilySnapshot] = {}
    values: dict[str, dict[tuple[str, ...], SeriesSnapshot]] = {}
    for snap in snapshots:
        live = alive(snap.pid)
        for fam in snap.families:
            if fam.merge is not None and not live:
                continue  # a value read from a dead worker (its queue depth, its memory) is nobody's now
            per_pid = fam.merge == "pid"
            target = merged.get(fam.name)
            if target is None:
                labels = [*fam.labels, "pid"] if per_pid else list(fam.labels)
                target = merged[fam.name] = msgspec.structs.replace(fam, labels=labels, series=[])
                values[fam.name] = {}
            table = values[fam.name]
            for s in fam.series:
                key = (*s.labels, str(snap.pid)) if per_pid else tuple(s.labels)
                have = table.get(key)
                if have is None:
                    counts = None if s.counts is None else s.counts[:]
                    table[key] = SeriesSnapshot(list(key), value=s.value, counts=counts, sum=s.sum)
                elif s.counts is not None and have.counts is not None:
                    have.counts = [a + b for a, b in zip(have.counts, s.counts, strict=True)]
                    have.sum += s.sum
                elif fam.merge == "max":
                    have.value = max(have.value, s.value)
                else:
                    have.value += s.value
    for name, fam in merged.items():
        fam.series = list(values[name].values())
    return list(merged.values())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def render(families: Iterable[FamilySnapshot]) -> bytes:
    """The Prometheus text exposition format (0.0.4) of these families."""
    out: list[str] = []
    for fam in sorted(families, key=lambda f: f.name):
        out.append(f"# HELP {fam.name} {fam.help}")
        out.append(f"# TYPE {fam.name} {fam.kind}")
        for s in sorted(fam.series, key=lambda s: s.labels):
            if fam.kind == "histogram" and s.counts is not None and fam.bounds is not None:
                running = 0
                for bound, count in zip([*fam.bounds, math.inf], s.counts, strict=True):
                    running += count
                    le = _labels(fam.labels, s.labels, f'le="{_number(bound)}"')
                    out.append(f"{fam.name}_bucket{le} {running}")
                out.append(f"{fam.name}_sum{_labels(fam.labels, s.labels)} {_number(s.sum)}")
                out.append(f"{fam.name}_count{_labels(fam.labels, s.labels)} {running}")
            else:
                out.append(f"{fam.name}{_labels(fam.labels, s.labels)} {_number(s.value)}")
    out.append("")
    return "\n".join(out).encode()
