"""The seed README's walkthrough (Step 2's banner curls, Tests 1-4) against real processes.

The requests are the seed's curls: the same paths, JSON bodies and the raw `-d 'hello world'`
(curl sends it as application/x-www-form-urlencoded); the replies must be exactly the seed's.
Unlike the seed's sample status, ours must mark the leader with `is_leader`.
Test 4's `pkill -f "node-2"` is a SIGTERM to exactly node-2's process.
"""

from __future__ import annotations

import signal

from tests.integration.cluster import Cluster, MakeCluster, seed_view, wait_for

STORED = "Key-value pair stored successfully"


def test_fresh_cluster_bootstrap_node_leads_first(make_cluster: MakeCluster) -> None:
    c = make_cluster()
    c.start()  # node-1 first, then node-2 and node-3 at once, as start-cluster.sh does
    leader = c.wait_ready()
    assert leader == "node-1"
    status = c.status("node-1")
    assert status["cluster_size"] == 3
    assert status["is_leader"] is True
    assert status["local_node_id"] == "node-1"
    assert status["leader"] == "node-1"
    nodes = status["nodes"]
    assert sorted(nodes) == ["node-1", "node-2", "node-3"]
    assert nodes["node-1"]["state"] == "Leader"
    assert nodes["node-1"]["is_leader"] is True
    # Term 1 normally (the seed shows it); a CPU-starved start can take an extra round.
    term = nodes["node-1"]["term"]
    print(f"\nnode-1 leads a fresh cluster in term {term}")
    for follower in ("node-2", "node-3"):
        assert nodes[follower]["state"] == "Follower"
        assert nodes[follower]["is_leader"] is False
        assert nodes[follower]["term"] == term
        assert nodes[follower]["address"] == c.nodes[follower].raft
    assert status["timestamp"].endswith("Z")
    # Every node tells the same story about who leads.
    for node_id in ("node-2", "node-3"):
        other = c.status(node_id)
        assert other["leader"] == "node-1"
        assert other["is_leader"] is False
        assert other["local_node_id"] == node_id


def test_fresh_cluster_without_the_bootstrap_node_elects_another(make_cluster: MakeCluster) -> None:
    c = make_cluster()
    c.start(["node-2", "node-3"])  # node-1, the bootstrap node, is not there
    leader = c.wait_ready(deadline_s=60.0)
    assert leader in ("node-2", "node-3")
    assert c.put(leader, "early", "bird").status == 200
    # The bootstrap node arrives late, on a cluster that already has a leader: it joins as a
    # follower and does not disturb the leader.
    term = c.local(leader)["term"]
    c.start_node("node-1")
    assert c.wait_ready() == leader
    c.wait_caught_up("node-1", leader)
    assert c.local(leader)["term"] == term
    assert seed_view(c.get("node-1", "early").json) == {"key": "early", "value": "bird"}


def test_banner_commands(shared_cluster: Cluster) -> None:
    c = shared_cluster
    reply = c.req("node-1", "GET", "/cluster/status")
    assert reply.status == 200
    assert reply.json["cluster_size"] == 3
    # curl -X PUT http://localhost:8081/kv/test -d 'hello world'
    reply = c.put("node-1", "test", "hello world", as_json=False)
    assert reply.status == 200, reply
    assert seed_view(reply.json) == {"key": "test", "value": "hello world", "message": STORED}
    # curl http://localhost:8082/kv/test
    reply = c.get("node-2", "test")
    assert reply.status == 200, reply
    assert seed_view(reply.json) == {"key": "test", "value": "hello world"}


def test_seed_test_1_basic_operations(shared_cluster: Cluster) -> None:
    c = shared_cluster
    reply = c.put("node-1", "user:john", "John Doe, Software Engineer")
    assert reply.status == 200, reply
    assert reply.headers["content-type"].startswith("application/json")
    assert seed_view(reply.json) == {
        "key": "user:john",
        "value": "John Doe, Software Engineer",
        "message": STORED,
    }
    reply = c.get("node-1", "user:john")
    assert reply.status == 200, reply
    assert seed_view(reply.json) == {"key": "user:john", "value": "John Doe, Software Engineer"}


def test_seed_test_2_read_from_every_node(shared_cluster: Cluster) -> None:
    c = shared_cluster
    assert c.put("node-1", "user:john", "John Doe, Software Engineer").status == 200
    for node_id in ("node-2", "node-3"):
        reply = c.get(node_id, "user:john")  # linearizable by default: no waiting needed
        assert reply.status == 200, reply
        assert seed_view(reply.json) == {"key": "user:john", "value": "John Doe, Software Engineer"}


def test_seed_test_3_follower_forwards_writes(shared_cluster: Cluster) -> None:
    c = shared_cluster
    leader = c.wait_leader()
    follower = "node-2" if leader != "node-2" else "node-3"
    reply = c.put(follower, "company", "Distributed Systems Corp")
    assert reply.status == 200, reply
    assert seed_view(reply.json) == {
        "key": "company",
        "value": "Distributed Systems Corp",
        "message": STORED,
    }
    for node_id in ("node-1", "node-2", "node-3"):
        reply = c.get(node_id, "company")
        assert reply.status == 200, reply
        assert seed_view(reply.json) == {"key": "company", "value": "Distributed Systems Corp"}


def test_seed_test_4_one_node_stopped(shared_cluster: Cluster) -> None:
    c = shared_cluster
    c.wait_ready()
    # pkill -f "node-2" (SIGTERM): a clean stop, exit code 0.
    assert c.kill("node-2", signal.SIGTERM) == 0

    def node_2_unknown() -> dict[str, object] | None:
        status = c.status("node-1")
        return status if status["nodes"]["node-2"]["state"] == "Unknown" else None

    status = wait_for("node-2 shown as Unknown", node_2_unknown, 30.0, c.dump_logs)
    assert status["cluster_size"] == 3
    assert status["nodes"]["node-2"]["term"] == 0
    assert status["nodes"]["node-2"]["is_leader"] is False
    states = {n: v["state"] for n, v in status["nodes"].items() if n != "node-2"}
    assert sorted(states.values()) == ["Follower", "Leader"], status
    leaders = [n for n, v in status["nodes"].items() if v["is_leader"]]
    assert leaders == [status["leader"]]
    assert status["nodes"][status["leader"]]["state"] == "Leader"

    # The cluster still works with 2 of 3 nodes.
    reply = c.put("node-1", "test:fault-tolerance", "Still working with 2/3 nodes!")
    assert reply.status == 200, reply
    assert seed_view(reply.json) == {
        "key": "test:fault-tolerance",
        "value": "Still working with 2/3 nodes!",
        "message": STORED,
    }
    reply = c.get("node-3", "test:fault-tolerance")
    assert reply.status == 200, reply
    assert seed_view(reply.json) == {
        "key": "test:fault-tolerance",
        "value": "Still working with 2/3 nodes!",
    }
    # Reads and writes through node-3 too.
    assert c.put("node-3", "test:via-3", "yes").status == 200
    assert seed_view(c.get("node-1", "test:via-3").json) == {"key": "test:via-3", "value": "yes"}

    # node-2 comes back with its data and catches up.
    c.start_node("node-2")
    leader = c.wait_ready()
    c.wait_caught_up("node-2", leader)
    reply = c.get("node-2", "test:fault-tolerance", consistency="stale")
    assert seed_view(reply.json) == {
        "key": "test:fault-tolerance",
        "value": "Still working with 2/3 nodes!",
    }
    assert c.get("node-2", "user:john", consistency="stale").status == 200
