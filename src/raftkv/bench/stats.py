"""Numbers of a load run: percentiles, the result record, time series, medians and ratios.

Rules:
- Percentiles are nearest-rank on the sorted samples (p = 50, 90, 99, 99.9): the reported value
  is one that was actually observed, never an interpolation between two.
- Latencies are kept in milliseconds as floats; throughput is completed requests (errors
  included, as wrk counts them) per second of the run.
- A `LoadResult` is the same whichever generator produced it (wrk or the Python fallback), so
  the reports and the comparison do not care which ran.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

PERCENTILES: Final = (50.0, 90.0, 99.0, 99.9)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} not in (0, 100]")
    rank = math.ceil(p / 100 * len(sorted_values))
    return float(sorted_values[max(rank, 1) - 1])


def pkey(p: float) -> str:
    """50 -> "p50", 99.9 -> "p999"."""
    return "p" + (f"{p:g}".replace(".", ""))


def latency_summary(latencies_ms: Iterable[float]) -> dict[str, float]:
    values = sorted(latencies_ms)
    out = {pkey(p): percentile(values, p) for p in PERCENTILES}
    out["max"] = values[-1] if values else 0.0
    out["mean"] = statistics.fmean(values) if values else 0.0
    return out


@dataclass(frozen=True, slots=True)
class Sample:
    """One completed request: when it ended (s since the run's start), how long, whether ok."""

    t: float
    latency_ms: float
    ok: bool


@dataclass(slots=True)
class LoadResult:
    generator: str  # "wrk" or "python"
    mode: str  # put | get | mixed
    concurrency: int
    requests: int  # completed requests, errors included
    errors: dict[str, int]  # kind -> count (http_503:no_leader, timeout, connect, ...)
    duration_s: float
    latency_ms: dict[str, float]  # p50, p90, p99, p999, max, mean
    generator_cpu_s: float = 0.0  # CPU the load generator itself used
    samples: list[Sample] = field(default_factory=list)  # empty unless asked for
    progress: list[tuple[float, int]] = field(default_factory=list)  # (t, completed so far)

    @property
    def throughput(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def generator_cpu_pct(self) -> float:
        """The generator's CPU use in % of one core (100 = one core saturated)."""
        return 100 * self.generator_cpu_s / self.duration_s if self.duration_s > 0 else 0.0

    def to_json(self, *, with_samples: bool = False) -> dict[str, Any]:
        out = asdict(self)
        out["throughput"] = round(self.throughput, 1)
        out["error_count"] = self.error_count
        out["generator_cpu_pct"] = round(self.generator_cpu_pct, 1)
        out["samples"] = [asdict(s) for s in self.samples] if with_samples else len(self.samples)
        del out["progress"]  # raw counters; the timeline below says the same, per second
        out["timeline"] = [asdict(b) for b in time_series(self.samples, self.progress, width_s=1.0)]
        return out


@dataclass(frozen=True, slots=True)
class Bucket:
    t: float  # bucket start, s since the run's start
    throughput: float  # completions per second in the bucket
    errors: int
    p50_ms: float | None
    p99_ms: float | None


def time_series(
    samples: Sequence[Sample],
    progress: Sequence[tuple[float, int]] = (),
    width_s: float = 1.0,
) -> list[Bucket]:
    """Per-bucket throughput and latency. With samples, everything comes from them; without,
    throughput comes from the progress counters and latency is unknown (None)."""
    if width_s <= 0:
        raise ValueError("bucket width must be positive")
    if samples:
        end = max(s.t for s in samples)
        n = int(end // width_s) + 1
        lat: list[list[float]] = [[] for _ in range(n)]
        errs = [0] * n
        for s in samples:
            i = min(int(s.t // width_s), n - 1)
            lat[i].append(s.latency_ms)
            errs[i] += not s.ok
        out = []
        for i in range(n):
            values = sorted(lat[i])
            out.append(
                Bucket(
                    i * width_s,
                    len(values) / width_s,
                    errs[i],
                    percentile(values, 50) if values else None,
                    percentile(values, 99) if values else None,
                )
            )
        return out
    buckets: list[Bucket] = []
    prev_t, prev_n = 0.0, 0
    edge = width_s
    for t, n in progress:
        if t >= edge:
            rate = (n - prev_n) / (t - prev_t) if t > prev_t else 0.0
            buckets.append(Bucket(prev_t, rate, 0, None, None))
            prev_t, prev_n = t, n
            edge = t + width_s
    return buckets


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def column_medians(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per key, the median over `rows` (one dict of figures per round, all with the same keys)."""
    return {k: median([r[k] for r in rows]) for k in rows[0]} if rows else {}


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs, NaN when theirs is zero or either is NaN."""
    if theirs == 0 or math.isnan(theirs) or math.isnan(ours):
        return float("nan")
    return ours / theirs


def merge_errors(parts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in parts:
        for kind, n in part.items():
            if n:
                out[kind] = out.get(kind, 0) + n
    return dict(sorted(out.items()))
