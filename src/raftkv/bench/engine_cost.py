"""The HTTP engines side by side: raftkv with `server.http_engine: aiohttp`, the same with
`fast`, and etcd 3.4 as the yardstick, all three clusters up at once, in one run.

Each round runs every load against each system in turn, the order rotating every round, so
that what else the machine does falls on all alike; figures are medians over rounds, and the
ratios (fast/aiohttp, each/etcd) are what to read on a shared machine. The server CPU per
request (utime+stime of the three members per completed request) is the cost itself.

    python -m raftkv.bench.engine_cost [--rounds 3] [--duration 5]
        [--tests put_c64,get_lin_c64,put_c1] [--no-etcd]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

from raftkv.bench.clusters import EtcdCluster, LocalCluster
from raftkv.bench.compare import cost_options, load_run
from raftkv.bench.runner import fill_keyspace
from raftkv.bench.spec import System
from raftkv.bench.stats import median

SYSTEMS = ("aiohttp", "fast", "etcd")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--tests", default="put_c64,get_lin_c64,put_c1")
    ap.add_argument("--no-etcd", action="store_true")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/raftkv-engine-cost"))
    args = ap.parse_args()
    tests, opts = cost_options(args)
    systems = SYSTEMS[:2] if args.no_etcd else SYSTEMS
    clusters: dict[str, LocalCluster | EtcdCluster] = {
        name: (
            EtcdCluster(args.workdir / name)
            if name == "etcd"
            else LocalCluster(args.workdir / name, server={"http_engine": name})
        )
        for name in systems
    }
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    loads: list[float] = []
    try:
        for name, cluster in clusters.items():
            cluster.start()
            url = cluster.client_url(cluster.wait_leader(10.0))
            system: System = "etcd" if name == "etcd" else "raftkv"
            asyncio.run(fill_keyspace(url, system, "bench", opts.keys, opts.value_size))
        for rnd in range(args.rounds):
            order = systems[rnd % len(systems) :] + systems[: rnd % len(systems)]
            for test in tests:
                for name in order:
                    system = "etcd" if name == "etcd" else "raftkv"
                    r = load_run(clusters[name], system, test, opts, args.duration)
                    runs.setdefault((test.name, name), []).append(r)
                    errors = sum(r["errors"].values())
                    loads.append(os.getloadavg()[0])
                    print(
                        f"round {rnd} {test.name:12} {name:8} {r['throughput']:8.0f} req/s "
                        f"p50 {r['p50']:6.2f} p99 {r['p99']:6.2f} ms "
                        f"cpu {r['cpu_per_1k'] * 1000:6.0f} us/req errors {errors} "
                        f"load {loads[-1]:.1f}",
                        flush=True,
                    )
    finally:
        for cluster in clusters.values():
            cluster.stop()
    summary: dict[str, Any] = {"load_median": median(loads), "load_max": max(loads)}
    for test in tests:
        med = {
            name: {
                k: median([r[k] for r in runs[(test.name, name)]])
                for k in ("throughput", "p50", "p99", "cpu_per_1k")
            }
            for name in systems
            if (test.name, name) in runs
        }
        entry: dict[str, Any] = {"medians": med}
        if "aiohttp" in med and "fast" in med:
            a, f = med["aiohttp"], med["fast"]
            entry["fast/aiohttp"] = {
                "throughput": f["throughput"] / a["throughput"],
                "p50": f["p50"] / a["p50"],
                "cpu_per_request": f["cpu_per_1k"] / a["cpu_per_1k"],
            }
        if "etcd" in med:
            e = med["etcd"]
            for name in ("aiohttp", "fast"):
                entry[f"{name}/etcd"] = {
                    "throughput": med[name]["throughput"] / e["throughput"],
                    "p50": med[name]["p50"] / e["p50"],
                    "p99": med[name]["p99"] / e["p99"],
                }
        summary[test.name] = entry
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
