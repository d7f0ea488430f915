"""HTTP read workers (`server.read_workers`) on real processes: linearizable reads served by a
worker see every write acknowledged before them; connections move back to the node for
anything else; workers are restarted, and never outlive their node."""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
from pathlib import Path

import pytest

from tests.integration.cluster import Cluster, kv_path, wait_for


def _children(pid: int, marker: bytes = b"raftkv.server.read_worker") -> list[int]:
    """Child processes of `pid` whose command line holds `marker` (default: read workers)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == pid and marker in cmd:
            kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))


def _ready_workers(cluster: Cluster, node_id: str, n: int = 1) -> None:
    node = cluster.nodes[node_id]
    wait_for(
        f"{n} read worker(s) of {node_id} ready",
        lambda: node.log_text().count("read worker ready") >= n,
    )


class _KeepAlive:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=15)

    def send(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        self.conn.close()


def _worker_cluster(make_cluster: object) -> tuple[Cluster, str, str]:
    cluster: Cluster = make_cluster(server_extra={"read_workers": 1})  # type: ignore[operator]
    cluster.start()
    leader = cluster.wait_ready()
    follower = next(n for n in cluster.nodes if n != leader)
    _ready_workers(cluster, follower)
    return cluster, leader, follower


def _worker_connections(
    cluster: Cluster, node_id: str, n: int, pid: int | None = None
) -> list[_KeepAlive]:
    """`n` connections to `node_id`, each started with a stale GET (only those move to a
    worker); at least one is a worker's, and keeps serving every request sent on it.
    `pid`: the node's process when it is not `proc` (run under strace)."""
    node = cluster.nodes[node_id]
    assert node.proc is not None
    (worker,) = _children(node.proc.pid if pid is None else pid)
    before = _sockets(worker)
    conns = [_KeepAlive(node.http) for _ in range(n)]
    for conn in conns:
        assert conn.send("GET", kv_path("absent", "consistency=stale"))[0] == 404
    assert _sockets(worker) > before, "no connection reached the read worker"
    return conns


def test_linearizable_reads_on_a_worker_see_every_acknowledged_write(make_cluster: object) -> None:
    # Writes go to the leader; reads to a follower's worker, whose view of the state may lag
    # an acknowledged write (the next test makes that lag certain).
    cluster, leader, follower = _worker_cluster(make_cluster)
    conns = _worker_connections(cluster, follower, 4)
    try:
        for i in range(50):
            assert cluster.put(leader, "lin", str(i)).status == 200
            for conn in conns:
                status, body = conn.send("GET", kv_path("lin"))
                assert status == 200, body
                assert json.loads(body)["value"] == str(i), f"stale read at write {i}: {body!r}"
        for conn in conns:  # a stale read may lag, but is served and well formed
            status, body = conn.send("GET", kv_path("lin", "consistency=stale"))
            assert status == 200 and json.loads(body)["key"] == "lin", body
    finally:
        for conn in conns:
            conn.close()


def test_a_worker_never_answers_a_linearizable_read_from_an_older_state(
    make_cluster: object,
) -> None:
    # The follower's node process is stopped (SIGSTOP; its worker runs on) while a write is
    # acknowledged by the other two: the worker's view of the state is older than that write.
    # A linearizable read sent to the worker then must wait for the node's fence and return
    # the new value; a worker that read its view without the fence answers at once with the
    # old one (checked against such a mutant: it fails here).
    cluster, leader, follower = _worker_cluster(make_cluster)
    conns = _worker_connections(cluster, follower, 2)
    proc = cluster.nodes[follower].proc
    assert proc is not None
    try:
        for i in range(3):
            assert cluster.put(leader, "fence", f"old{i}").status == 200
            for conn in conns:
                wait_for(
                    "the follower to apply the write",
                    lambda c=conn, i=i: (
                        json.loads(c.send("GET", kv_path("fence"))[1])["value"] == f"old{i}"
                    ),
                )
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                assert cluster.put(leader, "fence", f"new{i}").status == 200
                for conn in conns:
                    conn.conn.request("GET", kv_path("fence"))
                # A reply while the node is stopped can only come from a fence-less read.
                assert conn.conn.sock is not None
                select.select([c.conn.sock for c in conns], [], [], 2.0)
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            for conn in conns:
                resp = conn.conn.getresponse()
                body = resp.read()
                assert resp.status == 200, body
                assert json.loads(body)["value"] == f"new{i}", f"read from an older state: {body!r}"
    finally:
        for conn in conns:
            conn.close()


def test_a_worker_connection_goes_back_to_the_node_for_writes(make_cluster: object) -> None:
    cluster, leader, _ = _worker_cluster(make_cluster)
    _ready_workers(cluster, leader)
    conns = _worker_connections(cluster, leader, 2)
    try:
        for n, conn in enumerate(conns):
            key = f"mixed{n}"
            status, body = conn.send("PUT", kv_path(key), b"one")
            assert status == 200 and json.loads(body)["value"] == "one", body
            status, body = conn.send("GET", kv_path(key))
            assert status == 200 and json.loads(body)["value"] == "one", body
            assert conn.send("DELETE", kv_path(key))[0] == 200
            assert conn.send("GET", kv_path(key))[0] == 404
            status, body = conn.send("GET", "/cluster/local")
            assert status == 200 and json.loads(body)["node_id"] == leader, body
    finally:
        for conn in conns:
            conn.close()
    # The node counted what its workers served.
    metrics = cluster.req(leader, "GET", "/metrics").body.decode()
    assert 'route="GET /kv/{key}",status="404"' in metrics


def test_workers_are_restarted_and_never_outlive_the_node(make_cluster: object) -> None:
    cluster, leader, follower = _worker_cluster(make_cluster)
    node = cluster.nodes[follower]
    assert node.proc is not None
    (first,) = _children(node.proc.pid)
    os.kill(first, signal.SIGKILL)
    second = wait_for(
        "a new read worker",
        lambda: next((p for p in _children(node.proc.pid) if p != first), None),  # type: ignore[union-attr]
    )
    _ready_workers(cluster, follower, 2)
    conns = _worker_connections(cluster, follower, 2)
    for conn in conns:
        conn.close()
    # SIGTERM: the node stops its worker and exits cleanly.
    assert cluster.kill(follower, signal.SIGTERM) == 0
    assert not _alive(second)
    # kill -9 of the node: its worker notices the closed channel and exits.
    other = next(n for n in cluster.nodes if n not in (leader, follower))
    _ready_workers(cluster, other)
    proc = cluster.nodes[other].proc
    assert proc is not None
    (worker,) = _children(proc.pid)
    cluster.kill(other, signal.SIGKILL)
    wait_for("the read worker of a killed node to exit", lambda: not _alive(worker))


@pytest.mark.parametrize("workers", [0, 1])
def test_reads_answer_the_same_with_and_without_workers(make_cluster: object, workers: int) -> None:
    cluster: Cluster = make_cluster(server_extra={"read_workers": workers})  # type: ignore[operator]
    cluster.start()
    leader = cluster.wait_ready()
    if workers:
        _ready_workers(cluster, leader)
    assert cluster.put(leader, "same", "v").status == 200
    replies = []
    for _ in range(4):  # fresh connections: some reach the worker
        for query in ("", "consistency=stale", "consistency=lease", "revision=1", "min_revision=2"):
            r = cluster.req(leader, "GET", kv_path("same", query))
            replies.append((r.status, r.body, r.headers.get("etag")))
    assert sorted(set(replies)) == sorted(
        {
            (
                200,
                b'{"key":"same","value":"v","create_revision":2,"mod_revision":2,"version":1}',
                '"2"',
            ),
            (404, b'{"error":"key not found","code":"key_not_found","key":"same"}', None),
        }
    )
