"""What the Prometheus metrics cost on the hot path: PUT throughput and server CPU, on and off.

Two 3-node clusters run side by side, one with `server.metrics: true`, one with `false`; wrk
drives PUTs at one of them at a time, alternating (on, off, off, on, ...) so that whatever else
the machine does falls on both alike. Reported per round and as medians: throughput and the
servers' CPU microseconds per request (the cost itself, less sensitive to a busy machine
than throughput).

    python -m raftkv.bench.metrics_cost [--rounds 6] [--duration 10] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from raftkv.bench.clusters import LocalCluster, cpu_seconds
from raftkv.bench.spec import LoadSpec
from raftkv.bench.stats import median
from raftkv.bench.wrk import run_wrk


def _round(cluster: LocalCluster, args: argparse.Namespace, tag: str) -> dict[str, float]:
    leader = cluster.wait_leader(10.0)
    spec = LoadSpec(
        url=cluster.client_url(leader),
        mode="put",
        duration_s=args.duration,
        concurrency=args.concurrency,
        prefix=f"cost-{tag}",
    )
    cpu0 = sum(cpu_seconds(p) for p in cluster.pids().values())
    result = run_wrk(spec)
    cpu = sum(cpu_seconds(p) for p in cluster.pids().values()) - cpu0
    return {
        "throughput": result.throughput,
        "cpu_us_per_request": 1e6 * cpu / result.requests if result.requests else 0.0,
        "p50_ms": result.latency_ms["p50"],
        "errors": float(result.error_count),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/raftkv-metrics-cost"))
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    clusters = {
        "on": LocalCluster(args.workdir / "on", server={"metrics": True}),
        "off": LocalCluster(args.workdir / "off", server={"metrics": False}),
    }
    runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    try:
        for c in clusters.values():
            c.start()
        for i in range(args.rounds):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            for tag in order:
                r = _round(clusters[tag], args, f"{tag}{i}")
                runs[tag].append(r)
                print(f"round {i} metrics {tag:3}: {json.dumps(r)}", flush=True)
    finally:
        for c in clusters.values():
            c.stop()
    summary = {
        tag: {k: median([r[k] for r in rs]) for k in rs[0]} for tag, rs in runs.items() if rs
    }
    on, off = summary["on"], summary["off"]
    summary["cost_pct"] = {
        "throughput": 100 * (1 - on["throughput"] / off["throughput"]),
        "cpu_per_request": 100 * (on["cpu_us_per_request"] / off["cpu_us_per_request"] - 1),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
