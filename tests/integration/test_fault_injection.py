"""Storage faults injected into a real node with strace: the node stops, nothing acked is lost.

Each case runs one node of a 3-node cluster under
`strace -f -e inject=SYSCALL:error=ERR:when=N` (the Nth call of SYSCALL in the process fails
with ERR), writes through the leader until the node exits, then checks:
- the node exits with code 74 (EX_IOERR) and ONE log line `storage failure: <op> <file>:
  <ERRNO> (<text>); ...; <what to do>` naming the injected errno;
- it stops promptly after the fault (strace's timestamp of the injected call vs. the exit);
- restarted without the fault, it rejoins, and every write the cluster acknowledged (even by
  the faulty node when it led) reads back linearizably from it.

A few targeted points run by default; the full matrix (syscalls x errors x N x role, with
frequent snapshots so the snapshot and compaction paths are hit) runs with
RAFTKV_FAULT_MATRIX=1.

One more case keeps the failed node up (test hook RAFTKV_TEST_LINGER_AFTER_FAILURE_MS) and
checks that it answers no read at all, stale ones and its read worker's included.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from raftkv.runtime import testhooks
from tests.integration.cluster import Cluster, HttpError, MakeCluster, kv_path, wait_for
from tests.integration.test_read_workers import (
    _children,
    _KeepAlive,
    _ready_workers,
    _worker_connections,
)

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(STRACE is None, reason="strace is not installed")

EXIT_IOERR = 74
MAX_WRITES = 400


@dataclass(frozen=True)
class Point:
    role: str  # "follower" | "leader"
    syscall: str
    error: str
    when: int
    snapshot_every: int = 10_000

    def __str__(self) -> str:
        return f"{self.role}-{self.syscall}-{self.error}-{self.when}-snap{self.snapshot_every}"


DEFAULT_POINTS = [
    Point("follower", "fdatasync", "EIO", 25),
    Point("leader", "fdatasync", "EIO", 40),
    Point("follower", "pwrite64", "ENOSPC", 60),
]


def _matrix() -> list[Point]:
    points: list[Point] = []
    for role in ("follower", "leader"):
        for syscall, error in (
            ("fdatasync", "EIO"),
            ("fsync", "EIO"),
            ("pwrite64", "ENOSPC"),
            ("pwrite64", "EIO"),
            ("write", "ENOSPC"),
        ):
            # N within what 400 writes reach: write (-P: snapshot files only) and fsync
            # (snapshot file + directory) are called a few times per snapshot.
            whens = (2, 8, 20) if syscall in ("write", "fsync") else (5, 30, 120)
            for when in whens:
                points.append(Point(role, syscall, error, when, snapshot_every=25))
    return points


def run_point(make_cluster: MakeCluster, p: Point) -> dict[str, float]:
    extra: dict[str, object] = {"snapshot_every": p.snapshot_every}
    if p.snapshot_every < 10_000:
        # Keep few entries behind each snapshot, so the durable compaction really deletes.
        extra["snapshot_keep_entries"] = 10
    c = make_cluster(raft_extra=extra)
    victim = "node-1" if p.role == "leader" else "node-3"
    others = [n for n in c.nodes if n != victim]
    trace = c.root / f"strace-{victim}.txt"
    data = c.nodes[victim].data_dir
    # write/pwrite64 also carry sockets and the log: inject only into the node's data files
    # (strace -P counts and injects per matching path). fsync/fdatasync are all storage.
    paths = (
        [data / "raft.db", data / "raft.db-wal", data / "state" / "data.mdb"]
        + [data / "snapshots" / n for n in ("building.tmp.tmp", "building.tmp")]
        if "write" in p.syscall
        else []
    )
    prefix = [
        str(STRACE),
        "-f",
        "-qq",
        "-ttt",
        "-o",
        str(trace),
        *(arg for path in paths for arg in ("-P", str(path))),
        "-e",
        f"trace={p.syscall}",
        "-e",
        f"inject={p.syscall}:error={p.error}:when={p.when}",
    ]
    if p.role == "leader":
        # The bootstrap node (node-1) leads first: start it under strace alone, then the rest.
        c.start_node(victim, prefix=prefix)
        c.start(others)
    else:
        c.start(others)
        c.start_node(victim, prefix=prefix)
    node = c.nodes[victim]
    assert node.proc is not None
    traced_group = node.proc.pid  # strace and the node share a session (start_new_session)
    try:
        return _run_traced(c, p, victim, trace)
    finally:
        # Killing strace alone would leave the traced node running: kill the whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(traced_group, signal.SIGKILL)


def _run_traced(c: Cluster, p: Point, victim: str, trace: Path) -> dict[str, float]:
    others = [n for n in c.nodes if n != victim]
    node = c.nodes[victim]
    acked: dict[str, str] = {}

    def target() -> str:
        leader = c.leader(among=[n for n in c.nodes if c.nodes[n].running])
        return leader or others[0]

    wait_for(
        f"{victim} to start or fail",
        lambda: not node.running or c.leader() is not None,
        90.0,
        c.dump_logs,
    )
    if node.running and p.role == "follower":
        c.wait_caught_up(victim, c.wait_leader(), deadline_s=90.0)
    i = 0
    while node.running and i < MAX_WRITES:
        key, value = f"k{i}", f"v{i}"
        try:
            reply = c.put(target(), key, value)
        except HttpError:
            reply = None
        if reply is not None and reply.status == 200:
            acked[key] = value
        i += 1
    assert i < MAX_WRITES or not node.running, f"the fault never fired in {MAX_WRITES} writes"
    wait_for(f"{victim} to exit after the fault", lambda: not node.running, 30.0, c.dump_logs)
    exited_at = time.time()
    assert node.proc is not None
    assert node.proc.returncode == EXIT_IOERR, (node.proc.returncode, node.log_text()[-3000:])
    lines = [ln for ln in node.log_text().splitlines() if "storage failure:" in ln]
    assert len(lines) == 1, lines
    line = lines[0]
    assert re.search(rf"storage failure: \S.* /\S+: {p.error} \(", line), line
    assert "restart" in line, line
    injected = [ln for ln in trace.read_text().splitlines() if "INJECTED" in ln]
    assert injected, "strace never injected the fault"
    fault_at = float(injected[0].split()[1])
    stop_s = exited_at - fault_at
    # Restart without the fault: the cluster holds every acknowledged write.
    c.start_node(victim)
    c.wait_healthy(deadline_s=90.0)
    leader = c.wait_leader()
    c.wait_caught_up(victim, leader, deadline_s=90.0)
    for key, value in acked.items():
        reply = c.get(victim, key, consistency="linearizable")
        assert reply.status == 200 and reply.json["value"] == value, (key, reply)
    return {"acked": float(len(acked)), "stop_s": stop_s}


@pytest.mark.parametrize("point", DEFAULT_POINTS, ids=str)
def test_injected_storage_fault_stops_the_node_and_loses_nothing(
    make_cluster: MakeCluster, point: Point
) -> None:
    figures = run_point(make_cluster, point)
    assert figures["acked"] > 0
    assert figures["stop_s"] < 3.0, figures


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("RAFTKV_FAULT_MATRIX"), reason="full matrix: set RAFTKV_FAULT_MATRIX=1"
)
@pytest.mark.parametrize("point", _matrix(), ids=str)
def test_fault_matrix(make_cluster: MakeCluster, point: Point) -> None:
    figures = run_point(make_cluster, point)
    print(f"FAULT {point}: acked={figures['acked']:.0f} stop_s={figures['stop_s']:.2f}")
    assert figures["stop_s"] < 3.0, figures


def test_a_node_that_hit_a_storage_failure_answers_no_read_before_it_exits(
    make_cluster: MakeCluster,
) -> None:
    """Between an injected fsync EIO and the exit, no read is answered with data: stale GETs on
    the node's own connections and on its read worker's, fresh stale and range GETs, the auth
    listings and the inspector's keys — each is 503 `node_stopping` or a closed connection.
    The test hook keeps the failed node up (listening) long enough to ask it."""
    c = make_cluster(server_extra={"read_workers": 1})
    victim = "node-3"
    others = [n for n in c.nodes if n != victim]
    trace = c.root / f"strace-{victim}.txt"
    prefix = [str(STRACE), "-f", "-qq", "-ttt", "-o", str(trace), "-e", "trace=fdatasync"]
    prefix += ["-e", "inject=fdatasync:error=EIO:when=40"]
    c.start(others)
    node = c.start_node(victim, prefix=prefix, env={testhooks.LINGER_ENV: "600000"})
    assert node.proc is not None
    traced_group = node.proc.pid  # strace and the node share a session (start_new_session)
    conns: list[_KeepAlive] = []
    try:
        leader = c.wait_leader()
        assert c.put(leader, "seen", "data").status == 200
        c.wait_caught_up(victim, leader, deadline_s=90.0)
        if c.wait_leader() == victim:
            # An election under the start-up load can make the traced node lead; the fault
            # must hit a follower, so the writes below keep committing on the other two.
            reply = c.req(
                victim,
                "POST",
                "/cluster/leader",
                body=json.dumps({"to": others[0]}).encode(),
                headers={"Content-Type": "application/json"},
            )
            assert reply.status == 200, reply.body
        leader = c.wait_leader(among=others)
        _ready_workers(c, victim)
        (serve,) = _children(traced_group, b"serve")  # the node, strace's child
        conns = _worker_connections(c, victim, 4, serve)  # half of them held by the worker
        for conn in conns:
            status, body = conn.send("GET", kv_path("seen", "consistency=stale"))
            assert status == 200 and json.loads(body)["value"] == "data", body
        local_views = ("/auth/users", "/auth/roles", "/debug/keys?prefix=se")
        for path in local_views:  # answered from this node's state while it is sound
            assert c.req(victim, "GET", path).status == 200, path

        def failed() -> bool:
            return "storage failure:" in node.log_text()

        for i in range(MAX_WRITES):
            if failed():
                break
            assert c.put(leader, f"k{i}", "v").status == 200
        wait_for(f"{victim}'s injected fault", failed, 30.0, c.dump_logs)
        assert node.running, "the test hook keeps the failed node up"
        # A reply sent after the failure was handled: its read workers were told first.
        assert c.req(victim, "GET", "/ready").status == 503

        def refused(reply: tuple[int, bytes] | None) -> None:
            if reply is None:
                return  # the connection is gone: no data either
            status, body = reply
            assert status == 503, (status, body)
            assert json.loads(body)["code"] == "node_stopping", body

        for conn in conns:
            try:
                refused(conn.send("GET", kv_path("seen", "consistency=stale")))
            except (OSError, http.client.HTTPException):
                refused(None)
        for path in (
            kv_path("seen", "consistency=stale"),
            kv_path("seen"),
            "/kv?prefix=se&consistency=stale",
            *local_views,
        ):
            reply = c.req(victim, "GET", path)
            refused((reply.status, reply.body))
        injected = [ln for ln in trace.read_text().splitlines() if "INJECTED" in ln]
        assert injected, "strace never injected the fault"
    finally:
        for conn in conns:
            conn.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(traced_group, signal.SIGKILL)
