"""`raftkv serve` as a process: clean stops on SIGTERM/SIGINT, exit codes, refusals at start.

- SIGTERM (what `pkill` and orchestrators send) and SIGINT (Ctrl-C) stop a node with exit 0,
  promptly, even with an idle keep-alive client connected and a write in flight that cannot
  commit (no quorum): that write gets a JSON answer, not a dropped connection.
- A node that cannot bind its HTTP or Raft port exits 1 at once, naming the address, and stops
  its runtime cleanly on the way out (the log says "node stopped"); its data stays usable.
- An invalid config exits 2 naming the field.
"""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import threading
import time

import pytest

from tests.integration.cluster import Cluster, HttpError, MakeCluster, Reply, raftkv_executable


def test_sigterm_and_sigint_exit_zero_promptly(make_cluster: MakeCluster) -> None:
    c = make_cluster()
    c.start()
    leader = c.wait_ready()
    follower = next(n for n in c.nodes if n != leader)
    # An idle keep-alive client connection must not hold up the shutdown.
    idle = http.client.HTTPConnection(c.nodes[follower].host, c.nodes[follower].http_port)
    idle.request("GET", "/health")
    idle.getresponse().read()
    try:
        t0 = time.monotonic()
        assert c.kill(follower, signal.SIGINT, wait_s=15.0) == 0  # Ctrl-C
        took = time.monotonic() - t0
        assert took < 5.0, f"{follower} took {took:.1f}s to stop"
        assert "node stopped" in c.nodes[follower].log_text()
        print(f"\n{follower}: SIGINT -> exit 0 in {took:.2f}s")
    finally:
        idle.close()

    # A write reaches the leader just as its last follower dies (kill -9): the leader takes it
    # into its log but can never commit it. SIGTERM must still stop the node, within the
    # request timeout (5 s by default), and the client must get a JSON answer, not a dropped
    # connection.
    leader = c.wait_leader()  # leadership may have moved meanwhile on a loaded machine
    other = next(n for n in c.nodes if c.nodes[n].running and n != leader)
    before = c.local(leader)["last_index"]
    replies: list[Reply | Exception] = []

    def write(i: int) -> None:
        try:
            replies.append(c.put(leader, f"in-flight:{i}", "v"))
        except HttpError as exc:
            replies.append(exc)

    c.kill(other)
    writers = [threading.Thread(target=write, args=(i,)) for i in range(3)]
    for w in writers:
        w.start()
    try:
        # Proposed = in the leader's log (it stays leader for an election timeout or so).
        deadline = time.monotonic() + 10
        while c.local(leader)["last_index"] == before and time.monotonic() < deadline:
            time.sleep(0.01)
        in_flight = c.local(leader)["last_index"] - before
        t0 = time.monotonic()
        assert c.kill(leader, signal.SIGTERM, wait_s=20.0) == 0
        took = time.monotonic() - t0
    finally:
        for w in writers:
            w.join(timeout=30)
    print(f"{leader}: SIGTERM with {in_flight} uncommittable writes -> exit 0 in {took:.2f}s")
    assert took < 10.0, f"{leader} took {took:.1f}s to stop with writes in flight"
    assert len(replies) == 3
    for reply in replies:
        assert isinstance(reply, Reply), reply
        assert reply.status in (503, 504), reply
        assert isinstance(reply.json["code"], str), reply
        print(f"  a write in flight got {reply}")


@pytest.mark.parametrize("port", ["http", "raft"])
def test_port_in_use_exits_1_and_stops_cleanly(make_cluster: MakeCluster, port: str) -> None:
    c = make_cluster()
    node = c.nodes["node-2"]
    number = node.http_port if port == "http" else node.raft_port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((node.host, number))
        squatter.listen()
        c.start_node("node-2")
        assert node.proc is not None
        try:
            code = node.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node-2 kept running without its {port} port:\n{node.log_text()}")
    out = node.log_text()
    assert code == 1, out
    assert "address already in use" in out and str(number) in out, out
    assert "Traceback" not in out, out
    if port == "http":
        # The runtime had started before the HTTP listener failed: it must be stopped cleanly.
        assert "node stopped" in out, out
    # Its data is fine: with the port free, it starts and joins the others.
    c.start()
    c.wait_ready()


def test_invalid_config_exits_2_naming_the_field(make_cluster: MakeCluster) -> None:
    c: Cluster = make_cluster(raft_extra={"election_timeout_ms": 110})  # not a multiple of 25
    proc = subprocess.run(
        [str(raftkv_executable()), "serve", "--config", str(c.config_path), "--node-id", "node-1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc
    assert "raft.election_timeout_ms" in proc.stderr, proc.stderr
    proc = subprocess.run(
        [str(raftkv_executable()), "serve", "--config", str(c.config_path), "--node-id", "node-9"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc
    assert "node-9" in proc.stderr and "--node-id" in proc.stderr, proc.stderr
