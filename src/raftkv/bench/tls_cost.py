"""What HTTPS costs on the API: PUT and GET throughput, latency and server CPU, TLS on and off.

Two 3-node clusters run side by side, one plain, one with `tls.http` (certificates from
`raftkv certs init`; peer traffic stays plain in both, so only the API's TLS is measured). wrk
(which speaks https) drives one workload at one cluster at a time, alternating the order each
round (plain, tls, tls, plain, ...) so that whatever else the machine does falls on both alike.
wrk keeps its connections open, so the figures are the steady cost of encryption, not of
handshakes. Reported per round and as medians, with ratios tls / plain.

    python -m raftkv.bench.tls_cost [--rounds 4] [--duration 10] [--concurrency 64]
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
from raftkv.bench.stats import median
from raftkv.bench.wrk import run_wrk
from raftkv.transport.certs import CertLayout, init_certs

MODES = ("put", "get")
GET_KEYS = 1000


class TlsCluster(LocalCluster):
    """A LocalCluster whose API is HTTPS with the certificates under `certs`."""

    def __init__(self, base: Path, certs: CertLayout) -> None:
        super().__init__(base)
        self.certs = certs
        self.ctx = ssl.create_default_context(cafile=str(certs.ca_cert))

    def _write_config(self) -> None:
        super()._write_config()
        root = self.certs.root
        with self.config.open("a") as f:
            f.write(
                "tls:\n  http:\n"
                f'    cert: "{root}/{{node_id}}/http.crt"\n'
                f'    key: "{root}/{{node_id}}/http.key"\n'
                f'    ca: "{root}/ca.crt"\n'
            )

    def client_url(self, name: str) -> str:
        return f"https://{self.http[name]}"

    def leader(self) -> str | None:
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


async def _fill(url: str, ctx: ssl.SSLContext | None, prefix: str) -> None:
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

        keys = keyspace_keys(prefix, GET_KEYS)
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
        prefix="tlscost",
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
        "error_kinds": result.errors,  # type: ignore[dict-item]
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/raftkv-tls-cost"))
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    certs = CertLayout(args.workdir / "certs")
    init_certs(certs.root, ["node-1", "node-2", "node-3"], ["localhost", "127.0.0.1"])
    tls = TlsCluster(args.workdir / "tls", certs)
    clusters: dict[str, LocalCluster] = {"plain": LocalCluster(args.workdir / "plain"), "tls": tls}
    runs: dict[str, list[dict[str, float]]] = {f"{m} {t}": [] for m in MODES for t in clusters}
    try:
        for tag, c in clusters.items():
            c.start()
            url = c.client_url(c.wait_leader(10.0))
            asyncio.run(_fill(url, tls.ctx if tag == "tls" else None, "tlscost"))
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
    summary: dict[str, object] = {
        name: {k: median([r[k] for r in rs]) for k in rs[0] if k != "error_kinds"}
        for name, rs in runs.items()
        if rs
    }
    for mode in MODES:
        plain, tls_ = runs[f"{mode} plain"], runs[f"{mode} tls"]
        if plain and tls_:
            p = {k: median([r[k] for r in plain]) for k in plain[0] if k != "error_kinds"}
            t = {k: median([r[k] for r in tls_]) for k in tls_[0] if k != "error_kinds"}
            summary[f"{mode} tls/plain"] = {
                "throughput": t["throughput"] / p["throughput"],
                "cpu_us_per_request": t["cpu_us_per_request"] / p["cpu_us_per_request"],
                "p50_ms": t["p50_ms"] / p["p50_ms"],
            }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
