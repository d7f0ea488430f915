"""The operator tools against a real 3-node cluster: `raftkv inspect ... --json`, `raftkv bench`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from raftkv.bench.clusters import LocalCluster, http_json

pytestmark = pytest.mark.integration

RAFTKV = str(Path(sys.executable).with_name("raftkv"))
HAS_WRK = shutil.which("wrk") is not None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("tools"))
    try:
        c.start(timeout_s=60)
        yield c
    finally:
        c.stop()


def cli(*args: str, expect: int | None = 0) -> Any:
    proc = subprocess.run([RAFTKV, *args], capture_output=True, text=True, timeout=120, check=False)
    if expect is not None:
        assert proc.returncode == expect, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def wait_until(predicate: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_inspect_status(cluster: LocalCluster) -> None:
    report = cli("inspect", "status", "--json", "-a", cluster.http["node-2"])
    assert report["healthy"] and report["reachable"] == 3
    assert [n["id"] for n in report["nodes"]] == ["node-1", "node-2", "node-3"]
    leaders = [n["id"] for n in report["nodes"] if n["is_leader"]]
    assert leaders == [report["leader"]]
    for n in report["nodes"]:
        assert n["role"] in ("Leader", "Follower")
        assert isinstance(n["lag"], int) and n["lag"] >= 0
        assert n["applied_index"] <= n["commit_index"] <= n["last_index"]


def test_inspect_data_raft_online_and_offline(cluster: LocalCluster) -> None:
    base = cluster.client_url("node-1")
    for i in range(5):
        body = json.dumps({"value": f"v{i}"}).encode()
        assert http_json("PUT", f"{base}/kv/tools:{i}", body)[0] == 200
    address = cluster.http["node-1"]

    def consistent() -> Any:
        report = cli("inspect", "data", "--json", "--prefix", "tools:", "-a", address, expect=None)
        return report if report["consistent"] and len(report["keys"]) == 5 else None

    report = wait_until(consistent)
    assert report["keys"][0] == {
        "key": "tools:0",
        "values": {"node-1": "v0", "node-2": "v0", "node-3": "v0"},
        "divergent": False,
    }
    online = cli("inspect", "raft", "--json", "--entries", "10", "-a", address)
    commands = [e["command"] for e in online["entries"] if e["type"] == "put"]
    assert {"key": "tools:4", "value": "v4"} in commands
    assert online["last_index"] >= online["entries"][-1]["index"]
    node_dir = cluster.base / "data" / "node-1"
    offline = cli("inspect", "raft", "--json", "--entries", "50", "--data-dir", str(node_dir))
    assert offline["hard_state"]["term"] >= 1
    assert {"key": "tools:4", "value": "v4"} in [e["command"] for e in offline["entries"]]


def test_inspect_round_trip(cluster: LocalCluster) -> None:
    report = cli("inspect", "test", "--json", "-a", cluster.http["node-3"])
    assert report["ok"], report
    assert report["passed"] == 15 and report["failed"] == 0
    assert {s["node"] for s in report["steps"]} == {"node-1", "node-2", "node-3"}


@pytest.mark.parametrize(
    "generator",
    ["python", pytest.param("wrk", marks=pytest.mark.skipif(not HAS_WRK, reason="no wrk"))],
)
def test_tiny_bench(cluster: LocalCluster, generator: str) -> None:
    report = cli(
        "bench", "writes", "200", "-c", "8", "--generator", generator, "--json",
        "-a", cluster.http["node-2"],
    )  # fmt: skip
    r = report["result"]
    assert r["generator"] == generator
    assert 200 <= r["requests"] <= 208  # wrk may finish the requests already in flight
    assert r["error_count"] == 0, r["errors"]
    assert r["throughput"] > 0
    lat = r["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert report["leader"] in ("node-1", "node-2", "node-3")
    mixed = cli(
        "bench", "mixed", "200", "-c", "4", "--keys", "20", "--generator", generator,
        "--json", "-a", cluster.http["node-1"],
    )  # fmt: skip
    assert mixed["result"]["error_count"] == 0, mixed["result"]["errors"]
