"""`GET ?consistency=lease` on real nodes: served from the leader's lease when it holds one,
by a ReadIndex round otherwise (a follower, leases turned off), and never stale."""

from __future__ import annotations

from collections.abc import Callable

from tests.integration.cluster import Cluster, kv_path, wait_for
from tests.integration.test_metrics import scrape, value


def lease_reads(c: Cluster, node_id: str) -> float:
    return value(scrape(c, node_id), "raftkv_lease_reads_total")


def test_lease_reads_on_leader_and_follower(shared_cluster: Cluster) -> None:
    c = shared_cluster
    leader = c.wait_ready()
    follower = next(n for n in c.nodes if n != leader)
    before = lease_reads(c, leader)
    for i in range(5):
        assert c.put(leader, "lease:k", f"v{i}").status == 200
        # A write acknowledged before the read is always seen, on the leader ...
        got = c.get(leader, "lease:k", "lease")
        assert got.status == 200 and got.json["value"] == f"v{i}", got
        # ... and on a follower, where a lease read is a ReadIndex round via the leader.
        got = c.get(follower, "lease:k", "lease")
        assert got.status == 200 and got.json["value"] == f"v{i}", got
    absent = c.req(leader, "GET", kv_path("lease:absent", "consistency=lease"))
    assert absent.status == 404 and absent.json["code"] == "key_not_found", absent
    ranged = c.req(leader, "GET", "/kv?prefix=lease%3A&consistency=lease")
    assert ranged.status == 200 and ranged.json["count"] == 1, ranged

    # The leader holds its lease most of each tick: some reads are served from it (no round).
    def served_from_lease() -> bool:
        assert c.get(leader, "lease:k", "lease").status == 200
        return lease_reads(c, leader) > before

    wait_for("a lease read served from the leader's lease", served_from_lease, 20.0)
    assert lease_reads(c, follower) == 0  # followers never hold a lease


def test_lease_reads_turned_off_fall_back_to_read_index(
    make_cluster: Callable[..., Cluster],
) -> None:
    c = make_cluster(raft_extra={"lease_reads": False})
    c.start()
    leader = c.wait_ready()
    assert c.put(leader, "k", "v").status == 200
    rounds = value(scrape(c, leader), "raftkv_read_index_rounds_total")
    for _ in range(20):
        got = c.get(leader, "k", "lease")
        assert got.status == 200 and got.json["value"] == "v", got
    after = scrape(c, leader)
    assert value(after, "raftkv_lease_reads_total") == 0
    assert value(after, "raftkv_read_index_rounds_total") >= rounds + 20
