"""`--plot FILE.png`: throughput and latency over time, leader changes marked.

Rules: matplotlib is optional (`pip install 'raftkv[plot]'`); without it `plot_run` raises
`PlotUnavailable` with the install hint and the benchmark itself still reports. The Agg backend
is used (no display needed). Latency lines need per-request samples; without them (wrk against
etcd) only throughput is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from raftkv.bench.runner import LeaderEvent
from raftkv.bench.stats import LoadResult, time_series


class PlotUnavailable(Exception):
    """matplotlib is not installed."""


def plot_run(
    result: LoadResult,
    events: Sequence[LeaderEvent],
    path: Path,
    title: str,
    watch_offset_s: float = 0.0,
) -> None:
    """Draw `result` to `path`. `watch_offset_s`: the load's start on the watch's clock."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable("plotting needs matplotlib: pip install 'raftkv[plot]'") from exc
    buckets = time_series(
        result.samples, result.progress, width_s=1.0 if result.duration_s > 5 else 0.25
    )
    fig, (ax_tp, ax_lat) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    xs = [b.t for b in buckets]
    ax_tp.plot(xs, [b.throughput for b in buckets], drawstyle="steps-post", label="requests/s")
    errs = [b.errors for b in buckets]
    if any(errs):
        ax_tp.bar(
            xs,
            errs,
            width=0.8 * (xs[1] - xs[0] if len(xs) > 1 else 1),
            color="red",
            alpha=0.5,
            align="edge",
            label="errors",
        )
    ax_tp.set_ylim(bottom=0)
    ax_tp.set_ylabel("throughput (req/s)")
    ax_tp.legend(loc="lower right")
    lat_x = [b.t for b in buckets if b.p50_ms is not None]
    if lat_x:
        ax_lat.plot(lat_x, [b.p50_ms for b in buckets if b.p50_ms is not None], label="p50")
        ax_lat.plot(lat_x, [b.p99_ms for b in buckets if b.p99_ms is not None], label="p99")
        ax_lat.set_yscale("log")
        ax_lat.legend(loc="upper right")
    else:
        ax_lat.text(0.5, 0.5, "no per-request samples", ha="center", transform=ax_lat.transAxes)
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.set_xlabel("time (s)")
    for ev in events[1:]:
        t = ev.t - watch_offset_s
        for ax in (ax_tp, ax_lat):
            ax.axvline(t, color="orange", linestyle="--")
        ax_tp.annotate(
            f"leader {ev.leader} (term {ev.term})", (t, 0), rotation=90, fontsize=7, va="bottom"
        )
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
