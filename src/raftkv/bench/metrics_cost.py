"""What the Prometheus metrics cost on the hot path: PUT throughput and server CPU, on and off.

Two 3-node clusters run side by side, one with `server.metrics: true`, one with `false`; wrk
drives PUTs at one of them at a time, alternating (on, off, off, on, ...) so that whatever else
the machine does falls on both alike. Reported per round and as medians: throughput and the
servers' CPU microseconds per request (the cost itself, less sensitive to a busy machine
than throughput).

    python -m raftkv.bench.metrics_cost [--rounds 6] [--duration 10] [--concurrency 64] [--nodes 3]
    python -m raftkv.bench.metrics_cost --in-process [--rounds 10] [--requests 5000]

`--in-process` serves two one-node clusters (on, off) and the client in one process and
compares the process's CPU time per request: the machine's other load then barely matters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raftkv.bench.clusters import LocalCluster, cpu_seconds, free_ports
from raftkv.bench.spec import LoadSpec
from raftkv.bench.stats import column_medians, median
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
    ap.add_argument("--nodes", type=int, default=3, help="cluster size (1: no replication)")
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="one-node clusters and the client in this process: CPU per request, on vs off",
    )
    ap.add_argument("--requests", type=int, default=5000, help="per round, with --in-process")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/raftkv-metrics-cost"))
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    if args.in_process:
        print(json.dumps(asyncio.run(_in_process(args)), indent=2))
        return
    clusters = {
        "on": LocalCluster(args.workdir / "on", args.nodes, server={"metrics": True}),
        "off": LocalCluster(args.workdir / "off", args.nodes, server={"metrics": False}),
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
    summary = {tag: column_medians(rs) for tag, rs in runs.items() if rs}
    on, off = summary["on"], summary["off"]
    summary["cost_pct"] = {
        "throughput": 100 * (1 - on["throughput"] / off["throughput"]),
        "cpu_per_request": 100 * (on["cpu_us_per_request"] / off["cpu_us_per_request"] - 1),
    }
    print(json.dumps(summary, indent=2))


# -- in one process: the metrics' CPU per request, without the machine's noise ------------------


async def _in_process(args: argparse.Namespace) -> dict[str, Any]:
    """Two single-node clusters (metrics on, off) served in THIS process, PUTs from an aiohttp
    client here too; the process's CPU time per request is compared, alternating rounds. The
    client's share is the same for both, so the difference is what the metrics cost. One node
    (no replication) is the worst case: the least other work to hide the cost in."""
    import time

    import aiohttp

    from raftkv.raft.types import NodeId
    from raftkv.runtime.node import RaftKVNode
    from raftkv.runtime.options import NodeOptions
    from raftkv.server.config import load_settings
    from raftkv.server.http import create_app
    from raftkv.server.logging import configure_logging
    from raftkv.server.runner import run_http

    configure_logging("error", "console")
    served = {}
    for tag in ("on", "off"):
        raft_port, http_port = free_ports(2)
        root = args.workdir / tag
        root.mkdir(parents=True)
        cfg = root / "cluster.yaml"
        cfg.write_text(
            "cluster:\n"
            f"  name: cost-{tag}\n  bootstrap_id: n1\n  data_dir: {root / 'data'}\n"
            f"  nodes: {{n1: '127.0.0.1:{raft_port}'}}\n"
            f"  http: {{n1: '127.0.0.1:{http_port}'}}\n"
            f"server: {{metrics: {'true' if tag == 'on' else 'false'}}}\n"
        )
        s = load_settings({"config": str(cfg), "node_id": "n1"}, env={})
        node = RaftKVNode(
            NodeOptions(
                node_id=NodeId("n1"),
                cluster_name=s.cluster_name,
                data_dir=s.data_dir,
                raft_listen=(s.raft_listen.host, s.raft_listen.port),
                raft_advertise=str(s.raft_address),
                http_advertise=str(s.http_address),
                peers_raft={NodeId("n1"): ("127.0.0.1", raft_port)},
                peers_http={NodeId("n1"): f"127.0.0.1:{http_port}"},
                bootstrap_id=NodeId("n1"),
                metrics=s.metrics,
            )
        )
        await node.start()
        runner = await run_http(create_app(node, s), s)
        served[tag] = (node, runner, f"http://127.0.0.1:{http_port}")
    per_round = max(1, args.requests)
    out: dict[str, list[float]] = {"on": [], "off": []}
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=args.concurrency)
        ) as session:
            for node, _, _ in served.values():  # a one-node cluster elects itself
                while not node.is_ready():
                    await asyncio.sleep(0.05)
            for i in range(args.rounds):
                for tag in ("on", "off") if i % 2 == 0 else ("off", "on"):
                    base = served[tag][2]
                    todo = iter(range(per_round))

                    async def worker(
                        base: str = base, tag: str = tag, todo: Iterator[int] = todo
                    ) -> None:
                        for n in todo:
                            async with session.put(
                                f"{base}/kv/{tag}-{n % 1000}", data=b"x" * 100
                            ) as resp:
                                await resp.read()
                                assert resp.status == 200, resp.status

                    cpu0 = time.process_time()
                    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
                    cpu = time.process_time() - cpu0
                    out[tag].append(1e6 * cpu / per_round)
                    print(f"round {i} metrics {tag:3}: {out[tag][-1]:.1f} us CPU/request")
    finally:
        for node, runner, _ in served.values():
            await runner.cleanup()
            await node.stop()
    on, off = median(out["on"]), median(out["off"])
    return {
        "cpu_us_per_request": {"on": on, "off": off},
        "cost_us_per_request": on - off,
        "cost_pct": 100 * (on / off - 1),
    }


if __name__ == "__main__":
    main()
