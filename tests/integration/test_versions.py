"""Versions on real nodes: a data directory written by round 1 (commit e2e4924) is migrated and
served; one from a newer format is refused; a committed entry of an unknown command kind halts a
node, by name.

A newer node could (without the cluster-version gate) have proposed a kind this node does not
know. The entry is the same on every node, so skipping it would fork the state machines, and
exiting would restart into it again: the node halts (runtime/halt.py), stays up and reports the
entry's index and the kind's tag.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import msgspec

from raftkv.kv.registry import COMMAND_SET_VERSION
from raftkv.storage.format import FORMAT_FILE, FORMAT_VERSION, read_format, write_format
from raftkv.storage.raftlog import entry_crc
from tests.integration.cluster import (
    MakeCluster,
    free_port,
    kv_path,
    raftkv_executable,
    request,
    wait_for,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "datadir-format1-e2e4924.tar.gz"


def one_node_config(root: Path) -> tuple[Path, str]:
    """A one-node cluster (`node-1`) whose data root is `root/data`; returns (config, http)."""
    taken: set[int] = set()
    raft, http = free_port("127.0.0.1", taken), free_port("127.0.0.1", taken)
    config = root / "one.yaml"
    config.write_text(
        "cluster:\n"
        f"  data_dir: {root / 'data'}\n"
        f'  nodes: {{node-1: "127.0.0.1:{raft}"}}\n'
        f'  http: {{node-1: "127.0.0.1:{http}"}}\n'
        "raft: {election_timeout_ms: 100, heartbeat_timeout_ms: 25}\n"
    )
    return config, f"127.0.0.1:{http}"


def serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(
            [str(raftkv_executable()), "serve", "--config", str(config), "--node-id", "node-1"],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_round1_data_directory_is_migrated_at_start_and_served(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path / "data", filter="data")
    node_dir = tmp_path / "data" / "node-1"
    assert read_format(node_dir) == 1
    config, http = one_node_config(tmp_path)
    log = tmp_path / "node.log"
    proc = serve(config, log)
    try:
        reply = wait_for(
            "the migrated node to serve a linearizable read",
            lambda: (r := request(http, "GET", kv_path("last"))).status == 200 and r,
            on_timeout=lambda: log.read_text(errors="replace")[-3000:],
        )
        assert reply.json["value"] == "written by e2e4924"
        assert request(http, "GET", kv_path("k07")).json["value"] == "value 7 ключ"
        assert request(http, "GET", kv_path("k03")).status == 404
        assert request(http, "PUT", kv_path("new"), b"after the upgrade").status == 200
        assert read_format(node_dir) == FORMAT_VERSION
        assert "data directory migrated" in log.read_text(errors="replace")
        status = request(http, "GET", "/cluster/status").json
        assert status["cluster_version"] == {
            "format_version": FORMAT_VERSION,
            "command_set": COMMAND_SET_VERSION,
        }
        assert status["nodes"]["node-1"]["command_set"] == COMMAND_SET_VERSION
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]


def test_newer_data_format_is_refused_with_exit_3(tmp_path: Path) -> None:
    node_dir = tmp_path / "data" / "node-1"
    write_format(node_dir, FORMAT_VERSION + 1)
    config, _ = one_node_config(tmp_path)
    done = subprocess.run(
        [str(raftkv_executable()), "serve", "--config", str(config), "--node-id", "node-1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3, done
    assert f"data format {FORMAT_VERSION + 1} was written by a newer raftkv" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in node_dir.iterdir()) == [FORMAT_FILE]  # nothing created


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


def test_unknown_command_kind_halts_the_node_naming_index_and_tag(
    make_cluster: MakeCluster,
) -> None:
    """Written into a stopped node's log with a valid CRC (as a newer node would have): at
    start the node halts at that entry, stays up and says so; it never exits or loops."""
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

    for start in (1, 2):  # a restart halts again at the same entry: no crash loop either way
        node = c.start_node(victim)
        halted = wait_for(
            f"{victim} halted",
            lambda: c.req(victim, "GET", "/health").json.get("halted"),
            60,
            c.dump_logs,
        )
        assert halted["index"] == idx and halted["tag"] == 99, halted
        assert "unknown command kind tag 99" in halted["error"], halted
        assert "Upgrade this node's binary" in halted["action"], halted
        assert f"raftkv member remove {victim}" in halted["action"], halted
        local = c.local(victim)
        assert local["role"] == "Halted" and local["applied_index"] == idx - 1, local
        ready = c.req(victim, "GET", "/ready")
        assert ready.status == 503 and ready.json["code"] == "node_halted", ready
        for reply in (c.get(victim, "k0"), c.get(victim, "k0", "stale"), c.put(victim, "x", "y")):
            assert reply.status == 503 and reply.json["code"] == "node_halted", reply
            assert reply.json["halted"]["index"] == idx, reply
        # The others see it, and carry on without it.
        other = next(n for n in c.nodes if n != victim)
        seen = c.status(other)["nodes"][victim]
        assert seen["state"] == "Halted" and seen["halted"]["index"] == idx, seen
        others = c.wait_leader([n for n in c.nodes if n != victim])
        assert c.put(others, "after", "ok").status == 200
        assert node.running, node.log_text()[-3000:]
        out = node.log_text().split(f"start #{node.starts} of {victim}")[-1]
        assert out.count("node halted: a committed entry cannot be applied") == 1, out
        assert "Traceback" not in out, out
        if start == 1:  # the operator stops it
            assert c.kill(victim, signal.SIGTERM) == 0
            out = node.log_text().split(f"start #{node.starts} of {victim}")[-1]
            assert f"it was halted at committed entry {idx}" in out, out
    # ... or replaces it: once removed, the halted process learns so and exits 0 by itself.
    survivor = c.wait_leader([n for n in c.nodes if n != victim])
    assert c.req(survivor, "DELETE", f"/cluster/members/{victim}").status == 200
    assert node.proc is not None and node.proc.wait(timeout=30) == 0
    assert "this node was removed from the cluster; stopping" in node.log_text()
