"""A follower that was down while the leader compacted its log catches up by snapshot; one
that missed fewer than `raft.snapshot_keep_entries` entries catches up by log, also after the
leader restarted (the durable log keeps those entries too).

With `raft.snapshot_every: 100` the leader snapshots every 100 applied entries; it keeps
`snapshot_keep_entries` (1000) entries behind its snapshot for slow followers, so the follower
must miss more than that for the leader to have nothing left to send it but a snapshot.
"""

from __future__ import annotations

import re
import signal
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from raftkv.ops.offline import read_offline
from tests.integration.cluster import NODE_IDS, Cluster, MakeCluster, wait_for

WRITES = 1500
WRITERS = 8


def write_keys(c: Cluster, node_id: str, keys: list[str]) -> None:
    def one(key: str) -> None:
        reply = c.put(node_id, key, f"value-of-{key}")
        assert reply.status == 200, (key, reply)

    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(one, keys))


def durable_first_index(db: Path) -> int:
    """First entry index in a node's SQLite log (read-only: the node keeps running)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT min(idx) FROM entries").fetchone()
        return int(row[0] or 0)
    finally:
        conn.close()


def test_lagging_follower_catches_up_by_snapshot(make_cluster: MakeCluster) -> None:
    c = make_cluster(raft_extra={"snapshot_every": 100})
    c.start()
    leader = c.wait_ready()
    lagger = "node-3" if leader != "node-3" else "node-2"
    write_keys(c, leader, [f"early:{i}" for i in range(50)])
    c.wait_caught_up(lagger, leader)
    lagger_last = c.local(lagger)["last_index"]
    c.kill(lagger, signal.SIGKILL)

    keys = [f"late:{i}" for i in range(WRITES)]
    write_keys(c, leader, keys)
    leader_db = c.nodes[leader].data_dir / "raft.db"
    first = wait_for(
        "the leader's log to be compacted past the follower",
        lambda: (f := durable_first_index(leader_db)) > lagger_last + 1 and f,
        30.0,
        c.dump_logs,
    )
    assert "snapshot taken" in c.nodes[leader].log_text()

    c.start_node(lagger)
    leader = c.wait_ready()
    c.wait_caught_up(lagger, leader, deadline_s=60.0)

    text = c.nodes[lagger].log_text()
    installed = [int(m) for m in re.findall(r"installed snapshot.*?index=(\d+)", text)]
    assert installed, "the follower never installed a snapshot:\n" + text[-4000:]
    assert max(installed) >= first - 1 > lagger_last
    snaps = list((c.nodes[lagger].data_dir / "snapshots").glob("snap-*.snap"))
    assert snaps, "no snapshot file kept in the follower's data dir"

    # Its data matches: every key, read from its own state (stale: no help from the leader).
    for key in ["early:0", "early:49", *keys]:
        reply = c.get(lagger, key, consistency="stale")
        assert reply.status == 200, (key, reply)
        assert reply.json["value"] == f"value-of-{key}", (key, reply)

    # It keeps replicating after the install, and survives a restart from its snapshot.
    write_keys(c, leader, [f"post:{i}" for i in range(20)])
    c.wait_caught_up(lagger, leader)
    assert c.get(lagger, "post:19", consistency="stale").status == 200
    c.restart(lagger, signal.SIGKILL)
    leader = c.wait_ready()
    c.wait_caught_up(lagger, leader)
    for key in ("early:0", "late:0", f"late:{WRITES - 1}", "post:19"):
        assert c.get(lagger, key, consistency="stale").status == 200, key


def test_whole_cluster_restarts_from_its_snapshots(make_cluster: MakeCluster) -> None:
    """After compaction every node restarts from a snapshot; they must still elect a leader
    (the configuration in force travels in the snapshot) and serve every key. 50 entries are
    kept behind each snapshot, so each restarts from a snapshot plus entries before it."""
    c = make_cluster(raft_extra={"snapshot_every": 100, "snapshot_keep_entries": 50})
    c.start()
    leader = c.wait_ready()
    keys = [f"k:{i}" for i in range(350)]
    write_keys(c, leader, keys)
    for node_id in c.nodes:
        c.wait_caught_up(node_id, leader)

    def all_compacted() -> bool:
        return all(durable_first_index(n.data_dir / "raft.db") > 200 for n in c.nodes.values())

    wait_for("every node's log compacted", all_compacted, 30.0, c.dump_logs)
    for node_id in c.nodes:
        c.kill(node_id, signal.SIGKILL)

    c.start()
    leader = c.wait_ready(deadline_s=30.0)
    for i, key in enumerate(keys):
        reply = c.get(NODE_IDS[i % 3], key)
        assert reply.status == 200 and reply.json["value"] == f"value-of-{key}", (key, reply)
    # Every node can lead: stop the leader twice over, a new one takes over each time.
    for _ in range(2):
        c.kill(leader, signal.SIGKILL)
        new = c.wait_leader(deadline_s=30.0)
        assert new != leader
        assert c.put(new, f"after:{leader}", "x").status == 200
        c.start_node(leader)
        c.wait_ready()
        leader = c.wait_leader()


KEEP = 50


def test_follower_lagging_within_kept_entries_catches_up_by_log_after_a_restart(
    make_cluster: MakeCluster,
) -> None:
    """Issue 9, hole 8: `raft.snapshot_keep_entries` is honoured by the DURABLE log, so after
    a snapshot, its compaction and a restart of the other nodes, a follower that missed fewer
    than KEEP entries is served by AppendEntries, never sent a snapshot."""
    c = make_cluster(raft_extra={"snapshot_every": 20, "snapshot_keep_entries": KEEP})
    c.start()
    leader = c.wait_ready()
    lagger = "node-3" if leader != "node-3" else "node-2"
    others = [n for n in NODE_IDS if n != lagger]
    write_keys(c, leader, [f"early:{i}" for i in range(100)])
    c.wait_caught_up(lagger, leader)
    lagger_last = c.local(lagger)["last_index"]
    c.kill(lagger, signal.SIGKILL)
    late = [f"late:{i}" for i in range(30)]
    write_keys(c, leader, late)  # the lagger misses ~30 entries, fewer than KEEP

    def snapshotted_past_lagger() -> bool:
        return all(
            read_offline(c.nodes[n].data_dir)["snapshot_index"] > lagger_last for n in others
        )

    wait_for("a snapshot past the lagger on both nodes", snapshotted_past_lagger, 30.0, c.dump_logs)
    for node_id in others:  # restart: the in-memory log is rebuilt from the durable one
        c.kill(node_id, signal.SIGKILL)
    c.start(others)
    leader = c.wait_ready(others)
    for node_id in others:
        view = read_offline(c.nodes[node_id].data_dir, limit=0)
        snap, first = view["snapshot_index"], view["first_index"]
        # Compacted (the head is gone), but (snap - KEEP, snap] is still on disk.
        assert 1 < first <= snap - KEEP + 1 <= lagger_last + 1, (node_id, view)

    c.start_node(lagger)
    c.wait_caught_up(lagger, leader, deadline_s=60.0)
    for key in ["early:0", "early:99", *late]:
        reply = c.get(lagger, key, consistency="stale")
        assert reply.status == 200 and reply.json["value"] == f"value-of-{key}", (key, reply)
    text = c.nodes[lagger].log_text()
    assert "installed snapshot" not in text, text[-4000:]
    assert "snapshot_sent" not in c.nodes[leader].log_text().rsplit("===== start #", 1)[-1]
