"""Versions on real nodes: a committed entry of an unknown command kind stops a node, by name.

A newer node could (without the cluster-version gate) have proposed a kind this node does not
know. The entry is the same on every node, so skipping it would fork the state machines: the
node must stop, promptly, with a message naming the entry's index and the kind's tag.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import msgspec
import pytest

from raftkv.storage.raftlog import entry_crc
from tests.integration.cluster import MakeCluster


def rewrite_last_command(db: Path, tag: int) -> int:
    """Make the last entry with data a well-formed command of kind `tag` (with a valid CRC,
    as a newer node would have written it); returns its index."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        idx, term, kind = conn.execute(
            "SELECT idx, term, kind FROM entries WHERE length(data) > 0 ORDER BY idx DESC LIMIT 1"
        ).fetchone()
        data = b"\x01" + msgspec.msgpack.encode([tag, "k", "v"])
        conn.execute(
            "UPDATE entries SET data = ?, crc = ? WHERE idx = ?",
            (data, entry_crc(term, idx, kind, data), idx),
        )
        return int(idx)
    finally:
        conn.close()


def test_unknown_command_kind_stops_the_node_naming_index_and_tag(
    make_cluster: MakeCluster,
) -> None:
    c = make_cluster()
    c.start()
    leader = c.wait_ready()
    victim = "node-3" if leader != "node-3" else "node-2"
    for i in range(5):
        assert c.put(leader, f"k{i}", "v").status == 200
    c.wait_caught_up(victim, leader)
    assert c.kill(victim, signal.SIGTERM) == 0
    data_dir = c.nodes[victim].data_dir
    idx = rewrite_last_command(data_dir / "raft.db", tag=99)
    # Lose the applied state so that the node applies its log again from the start.
    shutil.rmtree(data_dir / "state")

    node = c.start_node(victim)
    assert node.proc is not None
    try:
        code = node.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{victim} applied past an unknown command:\n{node.log_text()[-3000:]}")
    out = node.log_text().split(f"start #{node.starts} of {victim}")[-1]
    assert code == 70, out
    assert f"committed entry {idx} cannot be applied: unknown command kind tag 99" in out, out
    assert "Traceback" not in out, out
