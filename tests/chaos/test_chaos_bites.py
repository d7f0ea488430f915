"""Chaos bites: a node that serves every GET from local state is caught serving stale reads
while a partition cuts it off (tests/chaos/weak_node.py plants the bug)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.chaos.chaos_helpers import WEAK_NODE, needs_nft, run_chaos


@needs_nft
def test_stale_reads_from_an_isolated_leader_are_reported(tmp_path: Path) -> None:
    node_cmd = f"{sys.executable} {WEAK_NODE}"
    run = run_chaos(
        "network-partition",
        tmp_path,
        "--seed", "7", "--faults", "isolate-leader", "--node-cmd", node_cmd,
        duration=20,
    )  # fmt: skip
    r = run.report
    assert run.returncode == 1 and r.get("result") == "fail", run.explain()
    assert r["linearizability"]["verdict"] == "violation"
    assert "no write can explain" in r["linearizability"]["witnesses"][0]
    # At least one stale read was answered by the node the partition had cut off, while it was.
    during_own_isolation = [
        s
        for s in r["stale_reads"]
        if any(f["name"] == "isolate-leader" and s["node"] in f["nodes"] for f in s["faults"])
    ]
    assert during_own_isolation, run.explain()
    # The planted bug breaks reads only: the replicas still agree and nothing crashed. (Lost
    # writes are not asserted: the final reads go through the weak nodes too.)
    assert r["divergence"] == [] and r["crashes"] == []
