"""The report's verdict, exit code, text and JSON."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

from typer.testing import CliRunner

from raftkv.chaos.analysis import failovers, timeline
from raftkv.chaos.cluster import Crash
from raftkv.chaos.nemesis import FaultWindow
from raftkv.chaos.report import EXIT_ANOMALY, EXIT_INCONCLUSIVE, EXIT_PASS, ChaosReport
from raftkv.check import History, check_history
from raftkv.cli.main import app


def report(h: History, **changes: object) -> ChaosReport:
    w = FaultWindow("isolate-leader", "isolate node-1 (leader)", ("node-1",), "node-1", 1.0, 2.0)
    base = ChaosReport(
        scenario="network-partition",
        seed=7,
        duration_s=3,
        nodes=("node-1", "node-2"),
        clients=2,
        keys=1,
        faults_drawn_from=("isolate-leader",),
        work_dir="/tmp/x",
        history_path="/tmp/x/history.jsonl",
        ops=h.ops(),
        reasons=Counter({"ok": 3, "no_leader": 1}),
        failovers=failovers(h.ops(), [w]),
        timeline=timeline([], [w], 3.0, ["node-1", "node-2"]),
        check=check_history(h),
        lost=(),
        divergence=(),
        unexpected=(),
        crashes=(),
    )
    return dataclasses.replace(base, **changes)


def test_a_clean_run_passes() -> None:
    h = History()
    h.ok(h.put("c", "k", "a", at=0.5), at=0.6)
    h.ok(h.put("c", "k", "b", at=1.1), at=1.3)
    h.ok(h.get("c", "k", at=1.4), at=1.5, value="b")
    r = report(h)
    assert r.anomalies == [] and r.exit_code == EXIT_PASS
    text = r.render()
    assert "RESULT: PASS" in text and "failover 0.300 s" in text and "<- isolate-leader" in text
    doc = json.loads(r.to_json())
    assert doc["result"] == "pass" and doc["faults"][0]["failover_s"] == 0.3
    assert doc["faults"][0]["hit_leader"] is True and len(doc["timeline"]) == 3


def test_a_stale_read_fails_the_run_with_a_witness() -> None:
    h = History()
    h.ok(h.put("c", "k", "a", at=0), at=1)
    h.ok(h.put("c", "k", "b", at=2), at=3)
    h.ok(h.get("c", "k", at=4), at=5, value="a")
    r = report(h)
    assert r.exit_code == EXIT_ANOMALY
    text = r.render()
    assert "RESULT: FAIL - linearizability: 1 key(s) violate" in text
    assert "get('k') -> 'a'" in text  # the witness names the stale read
    assert json.loads(r.to_json())["linearizability"]["verdict"] == "violation"


def test_every_kind_of_anomaly_fails_the_run() -> None:
    h = History()
    crash = Crash("node-2", 3.0, 70, "invariant broken")
    for changes in (
        {"divergence": ["key 'k': node-1='a', node-2='b'"]},
        {"unexpected": ["PUT /kv/k on node-1: 500 ..."]},
        {"crashes": [crash]},
        {"problems": ["the cluster was not ready 30 s after healing"]},
    ):
        r = report(h, **changes)
        assert r.exit_code == EXIT_ANOMALY and len(r.anomalies) == 1, changes
        assert "RESULT: FAIL" in r.render()
    assert "invariant broken" in report(h, crashes=[crash]).render()


def test_an_exhausted_budget_is_inconclusive() -> None:
    h = History()
    for i in range(6):
        h.ok(h.put(f"c{i}", "k", f"v{i}", at=0), at=10)
    h.ok(h.get("r", "k", at=11), at=12, value="v0")
    r = report(h, check=check_history(h, max_steps=1))
    assert r.exit_code == EXIT_INCONCLUSIVE and "INCONCLUSIVE" in r.render()


def test_cli_lists_the_scenarios_and_rejects_unknown_faults() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["chaos", "--help"])
    assert result.exit_code == 0
    for name in ("random-failures", "network-partition", "load-test-with-failures"):
        assert name in result.output
    result = runner.invoke(app, ["chaos", "network-partition", "--faults", "isolate-leader,nope"])
    assert result.exit_code == 2 and "nope" in result.output


def test_the_failover_summary_leaves_out_faults_that_took_the_quorum() -> None:
    h = History()
    h.ok(h.put("c", "k", "a", at=1.1), at=1.3)
    h.ok(h.put("c", "k", "b", at=5.0), at=9.0)
    hit = FaultWindow("kill-leader", "kill -9 node-1", ("node-1",), "node-1", 1.0, 2.0)
    quorum = FaultWindow(
        "kill-majority", "kill -9 a majority", ("node-1", "node-2"), "node-1", 4.0, 8.0, False
    )
    r = report(h, failovers=failovers(h.ops(), [hit, quorum]))
    assert [f.seconds for f in r.failovers] == [0.3, 5.0]
    assert r.leader_failovers() == [0.3]
    assert json.loads(r.to_json())["leader_failover_s"] == [0.3]
