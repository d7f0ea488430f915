"""Backup and disaster recovery end to end on real processes (docs/operations.md):
`raftkv snapshot save` from a live cluster, `raftkv snapshot restore` into a new one, and
`raftkv serve --force-new-cluster` on the one survivor of a cluster that lost its quorum."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from raftkv.cli.main import app
from tests.integration.cluster import Cluster, raftkv_executable, wait_for


def raftkv(*args: str) -> subprocess.CompletedProcess[str]:
    """The real `raftkv` command in its own process."""
    return subprocess.run(
        [str(raftkv_executable()), *args], capture_output=True, text=True, timeout=120
    )


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The same command run in this process (the interpreter's start-up is seconds on a busy
    machine; the nodes stay real processes)."""
    result = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def test_save_from_a_live_cluster_and_restore_into_a_new_one(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    old = make_cluster()
    old.start()
    leader = old.wait_ready()
    follower = next(n for n in old.nodes if n != leader)
    expected = {f"user:{i}": f"value {i}" for i in range(60)}
    for key, value in expected.items():
        assert old.put(leader, key, value).status == 200
    assert old.delete(leader, "user:7").status == 200
    del expected["user:7"]

    # Any endpoint will do: the CLI finds the leader and downloads from it.
    file = tmp_path / "backup.snap"
    done = raftkv("snapshot", "save", str(file), "--endpoints", old.nodes[follower].http, "--json")
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["node"] == leader
    assert facts["records"] >= len(expected)  # a record per key, plus revision bookkeeping
    assert facts["index"] >= len(expected) + 2  # the writes, the delete and the leader's no-op
    assert len(expected) < facts["revision"] <= facts["index"]  # revision: the last write's index
    assert (tmp_path / "backup.snap.sha256").read_text().split()[0] == facts["sha256"]
    again = cli("snapshot", "save", str(file), "--endpoints", old.nodes[leader].http)
    assert again.returncode == 2 and "exists" in again.stderr  # never overwrites a backup
    status = cli("snapshot", "status", str(file), "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["sha256"] == facts["sha256"]
    old.close()  # the old cluster is gone for good

    new = make_cluster()
    members = ",".join(f"{n.id}={n.raft}" for n in new.nodes.values())
    data_root = str(new.root / "data")
    for node_id in new.nodes:
        seeded = cli(
            "snapshot", "restore", str(file), "--data-dir", data_root,
            "--node-id", node_id, "--initial-cluster", members,
        )  # fmt: skip
        assert seeded.returncode == 0, seeded.stderr
    refused = cli(
        "snapshot", "restore", str(file), "--data-dir", data_root,
        "--node-id", "node-1", "--initial-cluster", members,
    )  # fmt: skip
    assert refused.returncode == 2 and "not empty" in refused.stderr

    new.start()
    new_leader = new.wait_ready()
    for node_id in new.nodes:
        new.wait_caught_up(node_id, new_leader)
        for key, value in expected.items():
            got = new.get(node_id, key)
            assert got.status == 200 and got.json["value"] == value, (node_id, key, got)
        assert new.get(node_id, "user:7").status == 404
    assert new.put(new_leader, "after-restore", "yes").status == 200
    assert new.get(follower, "after-restore").json["value"] == "yes"


def test_force_new_cluster_on_the_last_survivor(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster()
    c.start()
    leader = c.wait_ready()
    survivor = next(n for n in c.nodes if n != leader)
    expected = {f"k{i}": f"v{i}" for i in range(40)}
    for key, value in expected.items():
        assert c.put(leader, key, value).status == 200
    # Quorum lost: two nodes die for good; the survivor is stopped to be repaired.
    for node_id in c.nodes:
        c.kill(node_id, signal.SIGKILL)

    c.start_node(survivor, args=["--force-new-cluster"])

    def leads() -> bool:
        return c.local(survivor)["role"] == "Leader"

    wait_for(f"{survivor} to lead alone", leads)
    for key, value in expected.items():
        got = c.get(survivor, key)  # linearizable: confirmed by the one-voter quorum
        assert got.status == 200 and got.json["value"] == value, (key, got)
    assert c.put(survivor, "after", "recovery").status == 200
    assert "forced a new single-voter cluster" in c.nodes[survivor].log_text()

    # The new configuration is durable: a plain restart still leads alone with all the data.
    c.kill(survivor, signal.SIGTERM)
    c.start_node(survivor)
    wait_for(f"{survivor} to lead alone again", leads)
    assert c.get(survivor, "after").json["value"] == "recovery"
    assert c.get(survivor, "k39").json["value"] == "v39"

    # Members are added back as new nodes with empty disks, one command each (`serve --join`):
    # each joins as a learner, catches up and is promoted to voter.
    c.new_node("node-4", join_via=survivor)
    c.start_node("node-4")

    def node4_votes() -> bool:
        members = c.req(survivor, "GET", "/cluster/members").json["members"]
        return any(m["id"] == "node-4" and m["role"] == "voter" for m in members)

    wait_for("node-4 to join and be promoted", node4_votes, deadline_s=90.0)
    assert c.put(survivor, "two-voters", "yes").status == 200  # needs node-4's vote now
    c.wait_caught_up("node-4", survivor)
    for key in ("k0", "k39", "after", "two-voters"):
        got = c.get("node-4", key)
        assert got.status == 200, (key, got)
