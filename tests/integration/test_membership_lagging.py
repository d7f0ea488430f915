"""A member that was down while others joined and left, and comes back when a node it has never
heard of leads: it must still catch up (issue 13: in a chaos membership run an original member
stayed at an old configuration, `cluster_size` 4 of 3, missing 99 acknowledged writes, while
the cluster answered ready).

Its record has no address for the new leader, and without peer TLS it refuses a Hello from an
id it does not know (the `mallory` rule, test_peer_attacks.py): before the fix it refused the
leader forever. Now it learns the members it lacks from a member it knows
(server/members_routes.py, runtime/member_table.py). Here that member is a learner, so the
leader is certainly one of the nodes the lagging member has never heard of. When every member
it knows was removed, the `--join` URL its restart names is the one left to ask (second test).
"""

from __future__ import annotations

import json
import signal

import pytest

from tests.integration.cluster import Cluster, MakeCluster, Reply, wait_for
from tests.integration.test_membership import Writer, members, wait_voter


def call(c: Cluster, via: str, method: str, path: str, body: object = None) -> Reply:
    data = json.dumps(body).encode() if body is not None else b""
    headers = {"Content-Type": "application/json"}
    return c.req(via, method, path, body=data, headers=headers, timeout_s=20.0)


def remove(c: Cluster, node_id: str) -> None:
    """Remove `node_id`, asking a live node; a leader handing over first may answer 503."""

    def done() -> bool:
        via = next(n.id for n in c.running() if n.id != node_id)
        reply = call(c, via, "DELETE", f"/cluster/members/{node_id}")
        assert reply.status in (200, 503, 504), reply
        return reply.status == 200

    wait_for(f"{node_id} removed", done, 60.0, c.dump_logs)
    wait_for(f"{node_id} to stop", lambda: not c.nodes[node_id].running, 60.0, c.dump_logs)


def test_member_down_while_the_cluster_changed_catches_up_from_an_unknown_leader(
    make_cluster: MakeCluster,
) -> None:
    c = make_cluster()
    c.start()
    first = c.wait_ready()
    w = Writer(c)
    w.write(10)

    # node-4: a learner that stays one (it can never lead), known to every original member.
    c.new_node("node-4", join_via=first)
    spec = {"id": "node-4", "raft_address": c.nodes["node-4"].raft, "learner": True}
    spec |= {"http_address": c.nodes["node-4"].http, "auto_promote": False}
    assert call(c, first, "POST", "/cluster/members", spec).status == 201
    c.start_node("node-4")  # its join asks for the same member again: answered as done
    c.wait_caught_up("node-4", c.wait_leader(["node-1", "node-2", "node-3"]))

    # node-3 is down while node-5 and node-6 join and node-1 and node-2 leave.
    c.kill("node-3", signal.SIGKILL)
    for new in ("node-5", "node-6"):
        leader = c.wait_leader([n.id for n in c.running() if n.id != "node-4"])
        c.new_node(new, join_via=leader)
        c.start_node(new)
        wait_voter(c, new, leader)
        w.write(5)
    for gone in ("node-1", "node-2"):
        remove(c, gone)
    leader = c.wait_leader(["node-5", "node-6"])
    w.write(10)
    assert sorted(members(c, leader)) == ["node-3", "node-4", "node-5", "node-6"]

    # node-3 comes back knowing node-1..4 only; node-5 or node-6 leads.
    c.start_node("node-3")
    c.wait_caught_up("node-3", leader, deadline_s=30.0)
    wait_for(
        "node-3 to know the new configuration",
        lambda: c.status("node-3")["cluster_size"] == 4,
        30.0,
        c.dump_logs,
    )
    assert "members learned from a peer's record" in c.nodes["node-3"].log_text()
    w.check("node-3")


@pytest.mark.parametrize("catch_up", ["log", "snapshot"])
def test_member_whose_every_known_peer_was_removed_catches_up_through_its_join_url(
    make_cluster: MakeCluster, catch_up: str
) -> None:
    """The chaos membership run's stuck member (seed 1): node-4 is down while node-5 and node-6
    join and every member it knows (node-1..3) is removed and stopped. Restarted with `--join`
    naming node-5, it has nobody left to vouch for the new leader: before the fix it refused
    node-5 and node-6 for good (no peer TLS) and held none of the later writes. Now the join
    URL's `/cluster/config`, which lists it as a member at its address, vouches for them; the
    new configuration then reaches it in the leader's log entries, or (`snapshot`: the leader
    compacted them away) in a snapshot, and it adopts node-5 and node-6 from there."""
    raft = {"snapshot_every": 20, "snapshot_keep_entries": 0} if catch_up == "snapshot" else {}
    c = make_cluster(raft_extra=raft)
    c.start()
    first = c.wait_ready()
    w = Writer(c)
    w.write(10)
    c.new_node("node-4", join_via=first)
    c.start_node("node-4")
    wait_voter(c, "node-4", first)
    w.write(5)

    c.kill("node-4", signal.SIGKILL)
    for new in ("node-5", "node-6"):
        leader = c.wait_leader([n.id for n in c.running()])
        c.new_node(new, join_via=leader)
        c.start_node(new)
        wait_voter(c, new, leader)
        w.write(5)
    for gone in ("node-1", "node-2", "node-3"):
        remove(c, gone)
    leader = c.wait_leader(["node-5", "node-6"])
    w.write(10)
    assert sorted(members(c, leader)) == ["node-4", "node-5", "node-6"]

    # node-4's record and member.yaml name node-1..4 only: all removed, all stopped.
    c.start_node("node-4", args=["--join", f"http://{c.nodes['node-5'].http}"])
    c.wait_caught_up("node-4", leader, deadline_s=30.0)
    wait_for(
        "node-4 to know the new configuration",
        lambda: sorted(c.status("node-4")["nodes"]) == ["node-4", "node-5", "node-6"],
        30.0,
        c.dump_logs,
    )
    assert c.status("node-4")["cluster_size"] == 3
    log = c.nodes["node-4"].log_text().split("start #2 of node-4")[1]
    assert "members learned from a peer's record" in log and 'src="--join http' in log
    assert ("installed snapshot" in log) == (catch_up == "snapshot")
    wait_for(
        "the leader to see node-4 healthy",
        lambda: members(c, leader)["node-4"]["healthy"] is True,
        30.0,
        c.dump_logs,
    )
    for key, value in w.acked.items():  # held by node-4 itself: a stale read answers locally
        reply = c.get("node-4", key, consistency="stale")
        assert reply.status == 200 and reply.json["value"] == value, (key, reply)
    w.write(5)  # and the cluster of three goes on, node-4 included
    c.wait_caught_up("node-4", c.wait_leader(["node-4", "node-5", "node-6"]))
