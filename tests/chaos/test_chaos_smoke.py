"""One short chaos run against the real node, part of the default suite: it must pass."""

from __future__ import annotations

from pathlib import Path

from tests.chaos.chaos_helpers import needs_nft, run_chaos


@needs_nft
def test_network_partitions_keep_the_real_node_linearizable(tmp_path: Path) -> None:
    run = run_chaos("network-partition", tmp_path, "--seed", "20240601", duration=35)
    r = run.report
    assert run.returncode == 0 and r.get("result") == "pass", run.explain()
    assert len(r["faults"]) >= 2, run.explain()  # the nemesis did act
    assert r["ops"]["ok"] > 500, run.explain()  # and the clients did get through
    assert r["linearizability"]["verdict"] == "ok"
    assert r["lost_writes"] == [] and r["divergence"] == [] and r["crashes"] == []
    assert all(f["failover_s"] is not None for f in r["faults"]), run.explain()
