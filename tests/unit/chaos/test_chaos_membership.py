"""The membership scenario's parts without a real cluster: which answers a change retries, the
conductor's retry loop against scripted replies, the node set's bookkeeping, the ledger check
and the report section."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from raftkv.chaos import httpclient
from raftkv.chaos.cluster import Cluster, NodeSpec
from raftkv.chaos.ledger import LEDGER_CLIENT, LedgerResult, compare, ledger_writes
from raftkv.chaos.membership import (
    Change,
    Conductor,
    MembershipAnomaly,
    MembershipSummary,
    expected_refusal,
)
from raftkv.chaos.run import SCENARIOS
from raftkv.check import History, OpKind

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def specs(n: int) -> list[NodeSpec]:
    return [NodeSpec(f"node-{i}", f"127.0.0.{i}", 9000 + i, 8000 + i) for i in range(1, n + 1)]


def test_expected_refusals_are_the_documented_ones() -> None:
    for status, code in (
        (409, "change_in_progress"),
        (409, "learner_not_ready"),
        (409, "would_lose_quorum"),
        (503, "no_leader"),
        (503, "not_leader"),
        (503, "leader_unreachable"),
        (503, "transfer_failed"),
        (504, "timeout"),
    ):
        assert expected_refusal(status, code), (status, code)
    for status, code in (
        (400, "member_removed"),
        (404, "member_not_found"),
        (400, "duplicate_member"),
        (500, "internal"),
        (409, "no_space"),  # a known code, but not a membership refusal
        (503, None),
    ):
        assert not expected_refusal(status, code), (status, code)


class ScriptedCluster(Cluster):
    """A cluster whose admin requests get scripted answers (its nodes never start)."""

    def __init__(self, tmp: Path, answers: list[object]) -> None:
        super().__init__(specs(3), SLEEPER, tmp / "c", tmp / "logs")
        self.answers = answers
        self.asked: list[tuple[str, str, str, bytes]] = []
        for node in self.nodes.values():
            node.start()

    async def admin(
        self,
        node_id: str,
        method: str,
        path: str,
        body: bytes = b"",
        timeout_s: float = 1.0,
        headers: dict[str, str] | None = None,
    ) -> httpclient.Reply:
        self.asked.append((node_id, method, path, body))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, tuple)
        status, doc = answer
        return httpclient.Reply(status, msgspec.json.encode(doc))


def conductor(cluster: Cluster, step_timeout_s: float = 30.0) -> Conductor:
    clock = time.monotonic

    return Conductor(
        cluster,
        [],
        Path("/nonexistent"),
        random.Random(1),
        clock,
        lambda _line: None,
        step_timeout_s=step_timeout_s,
    )


def test_a_change_is_asked_again_after_each_expected_refusal(tmp_path: Path) -> None:
    cluster = ScriptedCluster(
        tmp_path,
        [
            (409, {"code": "change_in_progress"}),
            httpclient.NotSent("refused"),
            (409, {"code": "would_lose_quorum", "quorum": 3}),
            httpclient.MaybeSent("reset"),
            (503, {"code": "no_leader"}),
            (200, {"removed": "node-2"}),
        ],
    )
    try:
        c = conductor(cluster)
        change = Change("remove", "remove node-2", time.monotonic())
        doc = asyncio.run(c.call(change, "DELETE", "/cluster/members/node-2"))
        assert doc == {"removed": "node-2"}
        assert change.retries == Counter(
            change_in_progress=1, not_sent=1, would_lose_quorum=1, connection_lost=1, no_leader=1
        )
        assert cluster.answers == []
        assert {a[1:3] for a in cluster.asked} == {("DELETE", "/cluster/members/node-2")}
    finally:
        cluster.stop_all()


def test_an_unexpected_answer_is_an_anomaly_not_a_retry(tmp_path: Path) -> None:
    cluster = ScriptedCluster(
        tmp_path,
        [(409, {"code": "learner_not_ready"}), (404, {"code": "member_not_found"}), (200, {})],
    )
    try:
        c = conductor(cluster)
        change = Change("remove", "remove node-9", time.monotonic())
        with pytest.raises(MembershipAnomaly, match=r"unexpected 404.*member_not_found"):
            asyncio.run(c.call(change, "DELETE", "/cluster/members/node-9"))
        assert len(cluster.answers) == 1  # it stopped at the 404
    finally:
        cluster.stop_all()


def test_a_change_refused_past_its_deadline_is_stuck(tmp_path: Path) -> None:
    cluster = ScriptedCluster(tmp_path, [(409, {"code": "change_in_progress"})] * 1000)
    try:
        c = conductor(cluster, step_timeout_s=0.6)
        change = Change("remove", "remove node-3", time.monotonic())
        with pytest.raises(MembershipAnomaly, match=r"stuck: remove node-3.*change_in_progress"):
            asyncio.run(c.call(change, "DELETE", "/cluster/members/node-3"))
    finally:
        cluster.stop_all()


def test_new_nodes_take_a_free_address_and_fresh_ports(tmp_path: Path) -> None:
    cluster = Cluster(specs(3), SLEEPER, tmp_path / "c", tmp_path / "logs")
    try:
        cluster.start_all()
        four = cluster.plan_node("node-4")
        assert four.host == "127.0.0.4"
        assert {four.raft_port, four.http_port}.isdisjoint({9001, 9002, 9003, 8001, 8002, 8003})
        node = cluster.add_node(four, lambda: ["-c", "ignored"])
        assert cluster.ids == ["node-1", "node-2", "node-3", "node-4"]
        with pytest.raises(ValueError, match="never reused"):
            cluster.add_node(four, lambda: [])
        assert not node.running  # registered, not started

        # node-2 is removed; its address stays taken while its process runs ...
        cluster.retire("node-2")
        assert cluster.ids == ["node-1", "node-3", "node-4"]
        assert cluster.plan_node("node-5").host == "127.0.0.5"  # node-4's is taken: a member
        # ... and is free once it is gone; its ports are never handed out again.
        cluster.nodes["node-2"].stop()
        again = cluster.plan_node("node-5")
        assert again.host == "127.0.0.2" and again.raft_port != 9002
        assert not cluster.nodes["node-2"].running
        cluster.nodes["node-2"].start()  # a retired node is never restarted
        assert not cluster.nodes["node-2"].running
    finally:
        cluster.stop_all()


def test_leaving_and_joining_exits_are_not_crashes(tmp_path: Path) -> None:
    # Exits with its last argument if it is a number, else 0 (`serve --config C --node-id ID`).
    code = "import sys; a = sys.argv[-1]; sys.exit(int(a) if a.isdigit() else 0)"
    cluster = Cluster(specs(3), [sys.executable, "-c", code], tmp_path / "c", tmp_path / "logs")
    leaving, plain = cluster.nodes["node-1"], cluster.nodes["node-2"]
    leaving.start()
    plain.start()
    leaving.leaving = True  # removed: stops by itself with 0
    joiner = cluster.add_node(cluster.plan_node("node-4"), lambda: ["serve", "2"])
    joiner.joining = True
    joiner.start()
    # Removed just after a fault's undo restarted it: refuses to start (2); or a real crash (1).
    refusing = cluster.add_node(cluster.plan_node("node-5"), lambda: ["serve", "2"])
    crashing = cluster.add_node(cluster.plan_node("node-6"), lambda: ["serve", "1"])
    for node in (refusing, crashing):
        node.start()
        node.leaving = True
    procs = (leaving, plain, joiner, refusing, crashing)
    wait_for(lambda: not any(p.running for p in procs))
    crashes = cluster.reap_crashes(at=1.0)
    # An exit 0 of a member is still a crash; a leaving node's 1 too.
    assert [c.node_id for c in crashes] == ["node-2", "node-6"]
    assert joiner.exit_code() == 2 and not joiner.killed  # for the conductor to see and retry
    joiner.joining = False  # once a member, an exit is a crash
    assert [c.returncode for c in cluster.reap_crashes(at=2.0)] == [2]


def test_ledger_every_acknowledged_write_on_every_member() -> None:
    h = History()
    ok = h.invoke(LEDGER_CLIENT, OpKind.PUT, "ledger-000001", "ledger.1", at=0.0)
    h.ok(ok, at=0.1)
    refused = h.invoke(LEDGER_CLIENT, OpKind.PUT, "ledger-000002", "ledger.2", at=0.2)
    h.fail(refused, at=0.3)
    unknown = h.invoke(LEDGER_CLIENT, OpKind.PUT, "ledger-000003", "ledger.3", at=0.4)
    h.unknown(unknown)
    other = h.invoke("c1", OpKind.PUT, "k0", "c1.1", at=0.5)
    h.ok(other, at=0.6)
    acked, refused_keys = ledger_writes(h.ops())
    assert acked == {"ledger-000001": "ledger.1"}
    assert refused_keys == {"ledger-000002"}

    good = {"ledger-000001": "ledger.1", "ledger-000003": "ledger.3"}  # unknown: either way
    assert compare("node-1", good, acked, refused_keys) == ([], [])
    assert compare("node-1", {"ledger-000001": "ledger.1"}, acked, refused_keys) == ([], [])
    missing, present = compare("node-6", {"ledger-000002": "ledger.2"}, acked, refused_keys)
    assert missing == ["ledger-000001='ledger.1' on node-6: found None"]
    assert present == ["ledger-000002 on node-6: 'ledger.2'"]


def test_the_report_section_says_what_was_done() -> None:
    changes = (
        Change("join", "join node-4 (127.0.0.4)", 1.0, 9.0, Counter(join_exit_2=1)),
        Change(
            "replace", "replace node-2: kill -9, remove", 10.0, 11.0, Counter(would_lose_quorum=2)
        ),
        Change("join", "replace node-2: join node-6 on an empty disk", 11.0, 20.0),
        Change("remove", "remove node-1 (the leader)", 12.0, 13.5),
        Change("remove", "remove node-3", 14.0, None),
    )
    ledger = LedgerResult(10, 2, ("node-4", "node-5"), ("ledger-000001 ...",), (), ())
    exits = ("node-4 exited 2 while joining: raftkv: invalid configuration: ...",)
    summary = MembershipSummary(
        1, changes, ("node-1", "node-4", "node-1"), (), exits, ("node-4", "node-5"), ledger
    )
    assert summary.leader_changes == 2
    assert summary.counts() == Counter(join=2, replace=1, remove=1)  # node-3: not done
    assert summary.retries() == Counter(would_lose_quorum=2, join_exit_2=1)
    text = "\n".join(summary.render())
    assert "steps done: join 2, replace 1, remove 1" in text
    assert "leader changes seen: 2 (node-1 -> node-4 -> node-1)" in text
    assert "not done  remove node-3" in text
    assert "NO, 1 missing" in text
    assert "node-4 exited 2 while joining: raftkv: invalid configuration" in text
    assert ledger.anomalies() == ["acknowledged ledger writes missing on a member: 1"]
    doc = json.loads(json.dumps(summary.to_json()))
    assert doc["steps_done"] == {"join": 2, "replace": 1, "remove": 1}
    assert doc["changes"][1]["retries"] == {"would_lose_quorum": 2}
    assert doc["ledger"]["missing"] == ["ledger-000001 ..."]
    assert dataclasses.replace(summary, ledger=None).to_json()["ledger"] is None


def test_the_scenario_is_registered() -> None:
    scenario = SCENARIOS["membership"]
    assert scenario.membership and "kill-leader" in scenario.faults
    assert "isolate-leader" in scenario.faults


def test_a_restarted_original_member_names_a_live_member_with_join(tmp_path: Path) -> None:
    """Every member it knew may have been removed while it was down (docs/membership.md): an
    original member's restart names a live one with --join, once its member files exist."""
    cluster = Cluster(specs(3), SLEEPER, tmp_path / "c.yaml", tmp_path / "logs")
    try:
        c = Conductor(
            cluster, [], tmp_path / "data", random.Random(1), time.monotonic, lambda _: None
        )
        cluster.start_all()
        node = cluster.nodes["node-1"]
        assert node._cmd[len(SLEEPER) :][:2] == ["serve", "--config"]
        node.kill()
        node.start()  # no member files yet: --join would join it as a new node
        assert "--join" not in node._cmd and "--config" in node._cmd
        (tmp_path / "data" / "node-1").mkdir(parents=True)
        (tmp_path / "data" / "node-1" / "member.json").write_text("{}")
        cluster.nodes["node-2"].kill()  # not live: never the one named
        node.kill()
        node.start()
        args = node._cmd[len(SLEEPER) :]
        assert args == [
            "serve",
            "--node-id", "node-1",
            "--join", "http://127.0.0.3:8003",
            "--data-dir", str(tmp_path / "data"),
        ]  # fmt: skip
        assert c.cycles == 0
    finally:
        cluster.stop_all()
