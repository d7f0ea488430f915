"""A LEADER that meets a committed entry it cannot apply halts; the cluster carries on.

The test hook `RAFTKV_TEST_UNDECODABLE=<text>` (runtime/testhooks.py) makes one node unable to
decode entries holding <text>, as a node of an older version would be; the others apply them.
The halted leader must: never acknowledge the write (503 node_halted), stay up and report the
entry, step out so that the others elect a leader and keep serving, and, restarted without the
hook (an "upgraded" binary), apply the entry and rejoin.
"""

from __future__ import annotations

import json
import signal

import pytest

from tests.integration.cluster import MakeCluster, wait_for


@pytest.mark.parametrize("read_workers", [0, 1])
def test_a_halting_leader_steps_out_and_an_upgrade_resumes(
    make_cluster: MakeCluster, read_workers: int
) -> None:
    # With a read worker (server.read_workers), half the fresh GET connections below reach
    # it: it must answer exactly as the node (node_halted), for stale reads too.
    c = make_cluster(server_extra={"read_workers": read_workers})
    c.start_node("node-1", env={"RAFTKV_TEST_UNDECODABLE": "poison-key"})
    c.start(["node-2", "node-3"])
    c.wait_ready()
    if read_workers:
        wait_for(
            "node-1's read worker", lambda: "read worker ready" in c.nodes["node-1"].log_text()
        )

    def node1_leads() -> bool:
        leader = c.leader()
        if leader is not None and leader != "node-1":
            c.req(
                leader,
                "POST",
                "/cluster/leader",
                body=json.dumps({"to": "node-1"}).encode(),
                headers={"Content-Type": "application/json"},
            )
        return leader == "node-1"

    wait_for("node-1 leads", node1_leads, 60, c.dump_logs)
    assert c.put("node-1", "before", "1").status == 200

    reply = c.put("node-1", "poison-key", "v")
    # As the leader it halts on applying the entry: the write is never acknowledged (503). On a
    # loaded machine it may have lost the lead just before: then it forwarded the write (200
    # from the new leader) and halts when it applies the entry as a follower.
    assert reply.status == 200 or reply.json["code"] == "node_halted", reply
    halted = wait_for("node-1 halted", lambda: c.req("node-1", "GET", "/health").json.get("halted"))
    idx = halted["index"]
    assert halted["tag"] == 99, halted
    if reply.status == 503:
        assert reply.json["halted"] == halted, reply

    # The two others elect a leader among themselves and keep serving; the entry was committed,
    # so they applied it (the client's outcome was "unknown", not "lost").
    new_leader = c.wait_leader(["node-2", "node-3"])
    assert c.put(new_leader, "after", "2").status == 200
    assert c.get(new_leader, "poison-key").json["value"] == "v"

    local = c.local("node-1")
    assert local["role"] == "Halted" and local["applied_index"] == idx - 1, local
    assert local["leader_id"] is None, local
    health = c.req("node-1", "GET", "/health")
    assert health.status == 200 and health.json["status"] == "halted", health
    seen = c.status(new_leader)["nodes"]["node-1"]
    assert seen["state"] == "Halted" and seen["halted"]["index"] == idx, seen
    assert not seen["is_leader"], seen
    for consistency in (None, "stale", None, "stale", None, "stale"):
        got = c.get("node-1", "before", consistency)
        assert got.status == 503 and got.json["code"] == "node_halted", got
    metrics = c.req("node-1", "GET", "/metrics")
    assert metrics.status == 200 and b'raftkv_alarm{alarm="halted"} 1.0' in metrics.body, metrics
    out = c.nodes["node-1"].log_text()
    assert out.count("node halted: a committed entry cannot be applied") == 1, out[-3000:]

    # "Upgrade": restarted without the hook it applies from the entry on and catches up.
    assert c.kill("node-1", signal.SIGTERM) == 0
    c.start_node("node-1")
    c.wait_ready()
    c.wait_caught_up("node-1", new_leader)
    for key, value in (("before", "1"), ("poison-key", "v"), ("after", "2")):
        got = c.get("node-1", key, "stale")
        assert got.status == 200 and got.json["value"] == value, got
    wait_for("node-1 applied everything", lambda: "halted" not in c.local("node-1"))
