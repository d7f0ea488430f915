"""Read workers A/B: two 3-node raftkv clusters, `server.read_workers: 0` and N, up at once, the
same wrk loads against each leader in alternating order (docs/http-engine.md, "Read workers").

Each round runs every load against both clusters, the order flipping every round, so that what
else the machine does falls on both alike. Reported per round and as medians: throughput
ratio (N / 0), p99 ratio, and CPU per request of the members AND their read workers (children
of the members), from /proc.

    python -m raftkv.bench.read_workers_cost [--workers 1] [--rounds 4] [--duration 5]
        [--tests get_lin_c64,get_stale_c64,put_c64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from raftkv.bench.clusters import ClusterError, LocalCluster, cpu_seconds, family
from raftkv.bench.compare import cost_options, load_run
from raftkv.bench.runner import fill_keyspace
from raftkv.bench.stats import median


def _wait_workers(cluster: LocalCluster, leader: str, timeout_s: float = 60.0) -> None:
    log = cluster.base / "logs" / f"{leader}.log"
    end = time.monotonic() + timeout_s
    while "read worker ready" not in log.read_text(errors="replace"):
        if time.monotonic() > end:
            raise ClusterError(f"no read worker of {leader} became ready")
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--tests", default="get_lin_c64,get_stale_c64,put_c64")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/raftkv-read-workers-cost"))
    args = ap.parse_args()
    tests, opts = cost_options(args)
    counts = {"w0": 0, f"w{args.workers}": args.workers}
    clusters = {
        name: LocalCluster(args.workdir / name, log_level="info", server={"read_workers": n})
        for name, n in counts.items()
    }
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        for name, cluster in clusters.items():
            cluster.start()
            leader = cluster.wait_leader(10.0)
            if counts[name]:  # connections opened before a worker is ready stay with the node
                _wait_workers(cluster, leader)
            url = cluster.client_url(leader)
            asyncio.run(fill_keyspace(url, "raftkv", "bench", opts.keys, opts.value_size))
        names = list(clusters)
        for rnd in range(args.rounds):
            order = names if rnd % 2 == 0 else names[::-1]
            for test in tests:
                for name in order:
                    pids = family(clusters[name].pids().values())
                    cpu0 = sum(cpu_seconds(p) for p in pids)
                    r = load_run(clusters[name], "raftkv", test, opts, args.duration)
                    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
                    r["cpu_us"] = 1e6 * cpu / r["requests"] if r["requests"] else float("nan")
                    runs.setdefault((test.name, name), []).append(r)
                    print(
                        f"round {rnd} {test.name:14} {name:4} {r['throughput']:8.0f} req/s "
                        f"p99 {r['p99']:6.2f} ms cpu {r['cpu_us']:5.0f} us/req "
                        f"errors {sum(r['errors'].values())} load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
    finally:
        for cluster in clusters.values():
            cluster.stop()
    base, other = names
    summary: dict[str, Any] = {}
    for test in tests:
        a, b = runs[(test.name, base)], runs[(test.name, other)]
        ratios = [y["throughput"] / x["throughput"] for x, y in zip(a, b, strict=True)]
        summary[test.name] = {
            "throughput_per_round": [round(q, 2) for q in ratios],
            "throughput": median(ratios),
            "p99": median([y["p99"] / x["p99"] for x, y in zip(a, b, strict=True)]),
            "cpu_per_request": median(
                [y["cpu_us"] / x["cpu_us"] for x, y in zip(a, b, strict=True)]
            ),
        }
    print(json.dumps({f"{other}/{base}": summary}, indent=2))


if __name__ == "__main__":
    main()
