"""What forwarding costs: PUTs sent to a follower (forwarded) vs the same load sent to the leader.

One 3-node cluster; wrk drives PUTs at the leader or at a follower, alternating (leader,
follower, follower, leader, ...) so that whatever else the machine does falls on both alike.
Reported per round and as medians: throughput, p50/p99, and each member's CPU microseconds per
request (utime+stime from /proc), so the follower's forwarding cost and the leader's cost of a
forwarded request show apart. The load average is printed at the start and the end.

    python -m raftkv.bench.forward_cost [--rounds 3] [--duration 8] [--concurrency 64]
        [--server forward_over_peer=true]   # `server:` keys of the members' config (JSON values)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from raftkv.bench.clusters import LocalCluster, cpu_seconds
from raftkv.bench.spec import LoadSpec
from raftkv.bench.stats import column_medians, median
from raftkv.bench.wrk import run_wrk


def _round(
    cluster: LocalCluster, args: argparse.Namespace, target: str, tag: str
) -> dict[str, float]:
    leader = cluster.wait_leader(10.0)
    follower = next(n for n in cluster.names if n != leader)
    name = leader if target == "leader" else follower
    spec = LoadSpec(
        url=cluster.client_url(name),
        mode="put",
        duration_s=args.duration,
        concurrency=args.concurrency,
        prefix=f"fwd-{tag}",
    )
    pids = cluster.pids()
    cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
    result = run_wrk(spec)
    cpu = {n: cpu_seconds(p) - cpu0[n] for n, p in pids.items()}
    per = 1e6 / result.requests if result.requests else 0.0
    others = [n for n in cluster.names if n not in (leader, name)]
    return {
        "throughput": result.throughput,
        "p50_ms": result.latency_ms["p50"],
        "p99_ms": result.latency_ms["p99"],
        "cpu_us_cluster": per * sum(cpu.values()),
        "cpu_us_leader": per * cpu.get(leader, 0.0),
        "cpu_us_target": per * cpu.get(name, 0.0) if name != leader else 0.0,
        "cpu_us_other": per * sum(cpu.get(n, 0.0) for n in others),
        "errors": float(result.error_count),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/raftkv-forward-cost"))
    ap.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a `server:` key of the members' config, e.g. forward_over_peer=true (repeatable)",
    )
    args = ap.parse_args()
    server: dict[str, bool | int | str] = {}
    for item in args.server:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--server {item!r}: expected KEY=JSON")
        server[key] = json.loads(value)
    shutil.rmtree(args.workdir, ignore_errors=True)
    cluster = LocalCluster(args.workdir, server=server)
    runs: dict[str, list[dict[str, float]]] = {"leader": [], "follower": []}
    print(f"load average at start: {os.getloadavg()}; server: {server}", flush=True)
    try:
        cluster.start()
        for i in range(args.rounds):
            order = ("leader", "follower") if i % 2 == 0 else ("follower", "leader")
            for target in order:
                r = _round(cluster, args, target, f"{target}{i}")
                runs[target].append(r)
                print(f"round {i} {target:8}: {json.dumps(r)}", flush=True)
    finally:
        cluster.stop()
    print(f"load average at end: {os.getloadavg()}", flush=True)
    summary: dict[str, object] = {
        t: {k: round(v, 2) for k, v in column_medians(rs).items()} for t, rs in runs.items()
    }
    ratios = [
        f["throughput"] / ld["throughput"]
        for ld, f in zip(runs["leader"], runs["follower"], strict=True)
    ]
    summary["follower_over_leader_per_round"] = [round(x, 2) for x in ratios]
    summary["follower_over_leader_median"] = round(median(ratios), 2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
