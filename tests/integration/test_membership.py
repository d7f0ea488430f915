"""Membership on real processes: grow 3 -> 5 with one command each (promoted automatically),
kill the leader, remove the dead node, replace it with a fresh node on an empty disk, shrink
back to 3 (removing the leader too) -- no acknowledged write lost along the way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from typing import Any

import pytest

from tests.integration.cluster import (
    Cluster,
    HttpError,
    MakeCluster,
    Reply,
    raftkv_executable,
    wait_for,
)

STRACE = shutil.which("strace")


class Writer:
    """Writes fresh keys through any running node; remembers what was acknowledged."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.acked: dict[str, str] = {}
        self.n = 0

    def write(self, count: int) -> None:
        done = 0
        while done < count:
            nodes = [n.id for n in self.c.running()]
            target = nodes[self.n % len(nodes)]
            key, value = f"k{self.n}", f"v{self.n}"
            self.n += 1  # a fresh key per attempt: an unknown outcome never hides a loss
            try:
                reply = self.c.put(target, key, value)
            except HttpError:
                continue
            if reply.status == 200:
                self.acked[key] = value
                done += 1
            else:
                assert reply.status in (503, 504), reply

    def check(self, node_id: str) -> None:
        for key, value in self.acked.items():
            reply = self.c.get(node_id, key)
            assert reply.status == 200 and reply.json["value"] == value, (node_id, key, reply)


def members(c: Cluster, via: str) -> dict[str, dict[str, Any]]:
    reply = c.req(via, "GET", "/cluster/members", timeout_s=10.0)
    assert reply.status == 200, reply
    return {m["id"]: m for m in reply.json["members"]}


def call(c: Cluster, via: str, method: str, path: str, body: object = None) -> Reply:
    data = json.dumps(body).encode() if body is not None else b""
    return c.req(
        via, method, path, body=data, headers={"Content-Type": "application/json"}, timeout_s=20.0
    )


def cli(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """The `raftkv` command, piped (so its tables get 80 columns)."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run(
        [str(raftkv_executable()), *args], capture_output=True, text=True, timeout=60, env=env
    )


def wait_voter(c: Cluster, node_id: str, via: str) -> None:
    wait_for(
        f"{node_id} promoted to voter",
        lambda: members(c, via).get(node_id, {}).get("role") == "voter",
        90.0,
        c.dump_logs,
    )


def test_grow_replace_shrink_keeps_every_acknowledged_write(make_cluster: MakeCluster) -> None:
    c = make_cluster()
    c.start()
    first = c.wait_ready()
    w = Writer(c)
    w.write(30)

    # Grow 3 -> 5: one command per node, promoted automatically once caught up.
    for new in ("node-4", "node-5"):
        c.new_node(new, join_via="node-2")
        c.start_node(new)
        wait_voter(c, new, first)
        w.write(20)
    assert sorted(members(c, "node-3")) == [f"node-{i}" for i in range(1, 6)]
    status = c.status("node-4")
    assert status["cluster_size"] == 5 and sorted(status["nodes"]) == sorted(members(c, first))

    # Kill the leader; the other four elect a new one and keep accepting writes.
    old = c.wait_leader()
    c.kill(old, signal.SIGKILL)
    leader = c.wait_leader([n.id for n in c.running()])
    w.write(20)

    # Remove the dead node, replace it with a fresh one on an empty disk.
    reply = call(c, leader, "DELETE", f"/cluster/members/{old}")
    assert reply.status == 200, reply
    assert old not in members(c, leader)
    c.new_node("node-6", join_via=leader)
    c.start_node("node-6")
    wait_voter(c, "node-6", leader)
    w.write(20)

    # The removed node comes back with its old disk: it is refused and says so.
    c.start_node(old)
    wait_for(f"{old} to stop", lambda: not c.nodes[old].running, 60.0, c.dump_logs)
    assert "removed from the cluster" in c.nodes[old].log_text()

    # Shrink 5 -> 3, the leader included (it hands leadership over first).
    leader = c.wait_leader([n.id for n in c.running()])
    victims = [leader, next(n.id for n in c.running() if n.id != leader)]
    for victim in victims:
        via = next(n.id for n in c.running() if n.id != victim)
        reply = call(c, via, "DELETE", f"/cluster/members/{victim}")
        assert reply.status == 200, reply
        wait_for(f"{victim} to stop", lambda v=victim: not c.nodes[v].running, 30.0, c.dump_logs)
        assert c.nodes[victim].proc is not None and c.nodes[victim].proc.returncode == 0
        w.write(10)

    rest = [n.id for n in c.running()]
    assert len(rest) == 3
    leader = c.wait_leader(rest)
    assert sorted(members(c, leader)) == sorted(rest)
    assert c.status(rest[0])["cluster_size"] == 3
    for n in rest:
        w.check(n)


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_transfer_to_a_node_whose_fsync_outlasts_the_election_timeout(
    make_cluster: MakeCluster,
) -> None:
    """The failure the test above showed under load, made deterministic: every fsync of node-3
    takes 250 ms (strace), longer than any randomized election timeout (100-200 ms). Its
    transfer campaign must not time out while its own vote is being made durable (before the
    fix it fell back to PreVote, ignored the grants of its term, and another node won)."""
    c = make_cluster()
    slow = [
        str(STRACE),
        "-f",
        "--seccomp-bpf",
        "-qq",
        "-o",
        os.devnull,
        "-e",
        "trace=fsync,fdatasync",
        "-e",
        "inject=fsync,fdatasync:delay_exit=250000",
    ]
    c.start(["node-1", "node-2"])
    c.start_node("node-3", prefix=slow)
    node3 = c.nodes["node-3"]
    assert node3.proc is not None
    traced_group = node3.proc.pid  # strace and the node share a session (start_new_session)
    try:
        leader = c.wait_ready()
        assert leader != "node-3"
        assert c.put(leader, "before", "1").status == 200
        c.wait_caught_up("node-3", leader)
        reply = call(c, leader, "POST", "/cluster/leader", {"to": "node-3"})
        assert reply.status == 200, reply
        assert c.wait_leader() == "node-3"
        assert c.put("node-3", "after", "2").status == 200
        assert c.get("node-1", "before").json["value"] == "1"
    finally:
        # Killing strace alone would leave the traced node running: kill the whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(traced_group, signal.SIGKILL)


def test_refusals_and_leader_transfer(make_cluster: MakeCluster) -> None:
    c = make_cluster()
    c.start()
    leader = c.wait_ready()
    follower = next(n for n in c.nodes if n != leader)
    other = next(n for n in c.nodes if n not in (leader, follower))

    # Bad input: 400 with a code, never a 500.
    for body, code in (
        ({"id": "bad id!", "raft_address": "h:1", "http_address": "h:2"}, "invalid_node_id"),
        ({"id": "n9", "raft_address": "nohost", "http_address": "h:2"}, "invalid_address"),
        (
            {"id": "n9", "raft_address": "h:1", "http_address": "h:2", "learner": False},
            "learner_required",
        ),
        ({"id": "node-2", "raft_address": "h:1", "http_address": "h:2"}, "duplicate_member"),
        (
            {"id": "n9", "raft_address": c.nodes["node-1"].raft, "http_address": "h:2"},
            "duplicate_member",
        ),
    ):
        reply = call(c, follower, "POST", "/cluster/members", body)
        assert reply.status == 400 and reply.json["code"] == code, (body, reply)
    assert call(c, follower, "DELETE", "/cluster/members/nobody").json["code"] == "member_not_found"

    # A learner that never starts: added (through a follower), not promotable, removable.
    spare = {
        "id": "spare",
        "raft_address": "127.0.0.1:1",
        "http_address": "127.0.0.1:2",
        "learner": True,
        "auto_promote": False,
    }
    reply = call(c, follower, "POST", "/cluster/members", spare)
    assert reply.status == 201, reply
    assert reply.json["member"]["role"] == "learner"
    again = call(c, other, "POST", "/cluster/members", spare)  # the same join asked again
    assert again.status == 201, again
    reply = call(c, other, "POST", "/cluster/members/spare/promote")
    assert reply.status == 409 and reply.json["code"] == "learner_not_ready", reply
    assert reply.json["lag"] > 0
    assert call(c, leader, "DELETE", "/cluster/members/spare").status == 200
    reply = call(c, leader, "POST", "/cluster/members", spare)
    assert reply.status == 400 and reply.json["code"] == "member_removed", reply

    # Leadership transfer through the CLI, asked of a follower; then the member table.
    done = cli(c, "leader", "transfer", follower, "-e", c.nodes[other].http, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["leader"] == follower, done
    assert c.wait_leader() == follower
    table = cli(c, "member", "list", "-e", c.nodes[other].http)
    assert table.returncode == 0, table
    lines = table.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, table.stdout
    assert any(line.startswith(f"{follower} ") and "voter*" in line for line in lines), lines
    bad = cli(c, "member", "remove", "nobody", "-e", c.nodes[other].http, "--json")
    assert bad.returncode != 0 and json.loads(bad.stdout)["code"] == "member_not_found", bad

    # With one voter down, removing a healthy one would leave 1 healthy of 2: refused.
    c.kill(leader, signal.SIGKILL)
    live = c.wait_leader([follower, other])
    wait_for(
        f"the leader to see {leader} down",
        lambda: members(c, live)[leader]["healthy"] is False,
        30.0,
        c.dump_logs,
    )
    reply = call(c, live, "DELETE", f"/cluster/members/{other if live != other else follower}")
    assert reply.status == 409 and reply.json["code"] == "would_lose_quorum", reply
    assert reply.json["quorum"] == 2 and reply.json["healthy_voters"] == 1
