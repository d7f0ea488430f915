"""What TLS costs: PUT and GET throughput, latency and server CPU, TLS on and off, side by side.

`--layer http` (default) measures HTTPS on the API (`tls.http`; peer links plain in both
clusters); `--layer peer` measures mutual TLS on the Raft links (`tls.peer`; the API plain in
both): every PUT crosses the peer links (append + ack to a quorum), a linearizable GET crosses
them for its ReadIndex heartbeat round. `--layer both` turns on both in the TLS cluster.

Two 3-node clusters run at the same time, one plain, one with TLS (certificates from `raftkv
certs init`). wrk (which speaks https) drives one workload at one cluster at a time, alternating
the order each round (plain, tls, then tls, plain, ...) so that whatever else the machine does
falls on both alike. wrk keeps its connections open, so the figures are the steady cost of
encryption, not of handshakes. Reported per round and as medians, with ratios tls / plain.

    python -m raftkv.bench.tls_cost [--layer http|peer|both] [--rounds 4] [--duration 10]
        [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import ssl
import urllib.request
from pathlib import Path

import aiohttp

from raftkv.bench.clusters import LocalCluster, cpu_seconds
from raftkv.bench.spec import LoadSpec, keyspace_keys
from raftkv.bench.stats import column_medians
from raftkv.bench.wrk import run_wrk
from raftkv.transport.certs import CertLayout, init_certs

MODES = ("put", "get")
LAYERS = ("http", "peer", "both")
GET_KEYS = 1000
PREFIX = "tlscost"


class TlsCluster(LocalCluster):
    """A LocalCluster with TLS on the API (`http`), the peer links (`peer`) or both."""

    def __init__(self, base: Path, certs: CertLayout, layer: str) -> None:
        super().__init__(base)
        self.certs = certs
        self.http_tls = layer in ("http", "both")
        self.peer_tls = layer in ("peer", "both")
        self.ctx = ssl.create_default_context(cafile=str(certs.ca_cert))

    def _write_config(self) -> None:
        super()._write_config()
        root = self.certs.root
        lines = ["tls:"]
        for section, stem in (("http", "http"), ("peer", "peer")):
            if getattr(self, f"{section}_tls"):
                lines += [
                    f"  {section}:",
                    f'    cert: "{root}/{{node_id}}/{stem}.crt"',
                    f'    key: "{root}/{{node_id}}/{stem}.key"',
                    f'    ca: "{root}/ca.crt"',
                ]
        with self.config.open("a") as f:
            f.write("\n".join(lines) + "\n")

    def client_url(self, name: str) -> str:
        return f"https://{self.http[name]}" if self.http_tls else super().client_url(name)

    def leader(self) -> str | None:
        if not self.http_tls:
            return super().leader()
        seen: set[str | None] = set()
        for name in self.names:
            if not self.alive(name):
                continue
            try:
                url = f"{self.client_url(name)}/cluster/local"
                with urllib.request.urlopen(url, timeout=0.5, context=self.ctx) as resp:
                    seen.add(json.loads(resp.read()).get("leader_id"))
            except (OSError, ValueError):
                seen.add(None)
        return seen.pop() if len(seen) == 1 else None


async def _fill(url: str, ctx: ssl.SSLContext | None) -> None:
    """PUT every key the GET workload reads (set-up, not measured). Right after an election a
    PUT may meet 503 for a moment; re-putting the same value is harmless, so retry briefly."""
    connector = aiohttp.TCPConnector(ssl=ctx if ctx is not None else False)
    headers = {"Content-Type": "text/plain"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def put(key: str) -> None:
            for _ in range(100):
                async with session.put(f"{url}/kv/{key}", data=b"x" * 100, headers=headers) as r:
                    if r.status == 200:
                        return
                await asyncio.sleep(0.05)
            raise RuntimeError(f"cannot fill {key}: HTTP {r.status}")

        keys = keyspace_keys(PREFIX, GET_KEYS)
        for i in range(0, len(keys), 50):
            await asyncio.gather(*(put(k) for k in keys[i : i + 50]))


def _round(cluster: LocalCluster, args: argparse.Namespace, mode: str) -> dict[str, float]:
    leader = cluster.wait_leader(10.0)
    spec = LoadSpec(
        url=cluster.client_url(leader),
        mode=mode,  # type: ignore[arg-type]
        duration_s=args.duration,
        concurrency=args.concurrency,
        keys=GET_KEYS,
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


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--layer", choices=LAYERS, default="http")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/raftkv-tls-cost"))
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    certs = CertLayout(args.workdir / "certs")
    init_certs(certs.root, ["node-1", "node-2", "node-3"], ["localhost", "127.0.0.1"])
    tls = TlsCluster(args.workdir / "tls", certs, args.layer)
    clusters: dict[str, LocalCluster] = {"plain": LocalCluster(args.workdir / "plain"), "tls": tls}
    runs: dict[str, list[dict[str, float]]] = {f"{m} {t}": [] for m in MODES for t in clusters}
    try:
        for tag, c in clusters.items():
            c.start()
            url = c.client_url(c.wait_leader(10.0))
            asyncio.run(_fill(url, tls.ctx if tag == "tls" and tls.http_tls else None))
        for i in range(args.rounds):
            order = ("plain", "tls") if i % 2 == 0 else ("tls", "plain")
            for mode in MODES:
                for tag in order:
                    r = _round(clusters[tag], args, mode)
                    runs[f"{mode} {tag}"].append(r)
                    print(f"round {i} {mode} {tag:5}: {json.dumps(r)}", flush=True)
    finally:
        for c in clusters.values():
            c.stop()
    summary: dict[str, object] = {"layer": args.layer}
    summary.update({name: column_medians(rs) for name, rs in runs.items() if rs})
    for mode in MODES:
        plain, tls_runs = runs[f"{mode} plain"], runs[f"{mode} tls"]
        if plain and tls_runs:
            p, t = column_medians(plain), column_medians(tls_runs)
            summary[f"{mode} tls/plain"] = {
                k: t[k] / p[k] for k in ("throughput", "cpu_us_per_request", "p50_ms") if p[k]
            }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
