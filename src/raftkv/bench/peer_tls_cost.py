"""What mutual TLS between peers costs: PUT and GET at c=64, peer TLS on and off, side by side.

Two 3-node clusters run at the same time on 127.0.0.1, one with plain peer links, one with
`tls.peer` (certificates from `raftkv certs init`); the HTTP API is plain in both, so only the
Raft links' TLS is measured. wrk drives one workload at one cluster at a time, alternating the
order every round (plain, tls, then tls, plain, ...) so that what else the shared machine does
falls on both alike. Reported per run and as medians, with ratios tls / plain. Every PUT crosses
the peer links (append + ack to a quorum); a linearizable GET crosses them for its ReadIndex
heartbeat round.

    python -m raftkv.bench.peer_tls_cost [--rounds 4] [--duration 10] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
from pathlib import Path

import aiohttp

from raftkv.bench.clusters import LocalCluster, cpu_seconds
from raftkv.bench.spec import LoadSpec, keyspace_keys
from raftkv.bench.stats import median
from raftkv.bench.wrk import run_wrk
from raftkv.transport.certs import CertLayout, init_certs

MODES = ("put", "get")
KEYS = 1000
PREFIX = "peertls"
TEXT = {"Content-Type": "text/plain"}


async def _fill(url: str) -> None:
    """PUT every key the GET workload reads (set-up, not measured)."""
    async with aiohttp.ClientSession() as session:
        keys = keyspace_keys(PREFIX, KEYS)
        for i in range(0, len(keys), 50):
            puts = [
                session.put(
                    f"{url}/kv/{k}", data=b"x" * 100, headers={"Content-Type": "text/plain"}
                )
                for k in keys[i : i + 50]
            ]
            for resp in await asyncio.gather(*puts):
                resp.raise_for_status()
                resp.release()


class PeerTlsCluster(LocalCluster):
    """A LocalCluster whose peer links are mutual TLS with the certificates under `certs`."""

    def __init__(self, base: Path, certs: CertLayout) -> None:
        super().__init__(base)
        self.certs = certs

    def _write_config(self) -> None:
        super()._write_config()
        root = self.certs.root
        with self.config.open("a") as f:
            f.write(
                "tls:\n  peer:\n"
                f'    cert: "{root}/{{node_id}}/peer.crt"\n'
                f'    key: "{root}/{{node_id}}/peer.key"\n'
                f'    ca: "{root}/ca.crt"\n'
            )


def _run(cluster: LocalCluster, args: argparse.Namespace, mode: str) -> dict[str, float]:
    leader = cluster.wait_leader(10.0)
    spec = LoadSpec(
        url=cluster.client_url(leader),
        mode=mode,  # type: ignore[arg-type]
        duration_s=args.duration,
        concurrency=args.concurrency,
        keys=KEYS,
        prefix=PREFIX,
    )
    cpu0 = sum(cpu_seconds(p) for p in cluster.pids().values())
    result = run_wrk(spec)
    cpu = sum(cpu_seconds(p) for p in cluster.pids().values()) - cpu0
    return {
        "throughput": result.throughput,
        "cpu_us_per_request": 1e6 * cpu / result.requests if result.requests else 0.0,
        "p50_ms": result.latency_ms["p50"],
        "p99_ms": result.latency_ms["p99"],
        "errors": float(result.error_count),
    }


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: median([r[k] for r in runs]) for k in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/raftkv-peer-tls-cost"))
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    certs = CertLayout(args.workdir / "certs")
    init_certs(certs.root, ["node-1", "node-2", "node-3"], ["localhost", "127.0.0.1"])
    clusters: dict[str, LocalCluster] = {
        "plain": LocalCluster(args.workdir / "plain"),
        "tls": PeerTlsCluster(args.workdir / "tls", certs),
    }
    runs: dict[str, list[dict[str, float]]] = {f"{m} {t}": [] for m in MODES for t in clusters}
    try:
        for c in clusters.values():
            c.start()
            asyncio.run(_fill(c.client_url(c.wait_leader(10.0))))
        for i in range(args.rounds):
            order = ("plain", "tls") if i % 2 == 0 else ("tls", "plain")
            for mode in MODES:
                for tag in order:
                    r = _run(clusters[tag], args, mode)
                    runs[f"{mode} {tag}"].append(r)
                    print(f"round {i} {mode} {tag:5}: {json.dumps(r)}", flush=True)
    finally:
        for c in clusters.values():
            c.stop()
    summary: dict[str, object] = {name: _medians(rs) for name, rs in runs.items() if rs}
    for mode in MODES:
        plain, tls = runs[f"{mode} plain"], runs[f"{mode} tls"]
        if plain and tls:
            p, t = _medians(plain), _medians(tls)
            summary[f"{mode} tls/plain"] = {
                k: t[k] / p[k] for k in ("throughput", "cpu_us_per_request", "p50_ms") if p[k]
            }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
