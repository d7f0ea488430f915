"""The chaos cluster's config (read back by the real loader) and its process control."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raftkv.chaos.cluster import (
    Cluster,
    NodeProcess,
    NodeSpec,
    config_yaml,
    ephemeral_range,
    parse_node_cmd,
    plan_nodes,
)
from raftkv.server.config import load_settings

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]  # ignores `serve --config ...`


def proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_plan_gives_distinct_ports_on_each_host() -> None:
    specs = plan_nodes(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    assert [s.node_id for s in specs] == ["node-1", "node-2", "node-3"]
    assert [s.host for s in specs] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    ports = [p for s in specs for p in (s.raft_port, s.http_port)]
    assert len(set(ports)) == 6
    assert all(1024 <= p < ephemeral_range()[0] for p in ports)  # no ephemeral port: see free_port
    assert specs[1].endpoint.ports == (specs[1].raft_port, specs[1].http_port)


def test_the_config_is_what_the_server_reads(tmp_path: Path) -> None:
    specs = [
        NodeSpec("node-1", "127.0.0.1", 9101, 8101),
        NodeSpec("node-2", "127.0.0.2", 9102, 8102),
    ]
    path = tmp_path / "c.yaml"
    data = tmp_path / 'odd "dir"'
    path.write_text(
        config_yaml(specs, data, snapshot_every=77, leader_wait_ms=1000, request_timeout_ms=1500)
    )
    s = load_settings({"config": str(path), "node_id": "node-2"}, env={})
    assert (s.node_id, s.bootstrap_id) == ("node-2", "node-1")
    assert str(s.raft_address) == "127.0.0.2:9102" and str(s.http_address) == "127.0.0.2:8102"
    assert s.http_peer_strings() == {"node-1": "127.0.0.1:8101", "node-2": "127.0.0.2:8102"}
    assert s.data_dir == data / "node-2"
    assert (s.election_timeout_ms, s.heartbeat_ms) == (100, 25)  # the seed's timing
    assert (s.snapshot_every, s.leader_wait_ms, s.request_timeout_ms) == (77, 1000, 1500)


def test_node_cmd() -> None:
    assert parse_node_cmd("python 'tests/my dir/weak.py'") == ["python", "tests/my dir/weak.py"]
    assert parse_node_cmd(None)[0] == sys.executable
    assert parse_node_cmd("")[0] == sys.executable


def test_kill_pause_resume_restart_stop(tmp_path: Path) -> None:
    node = NodeProcess(
        NodeSpec("node-1", "127.0.0.1", 1, 2), SLEEPER, tmp_path / "c", tmp_path / "n.log"
    )
    node.start()
    first = node.pid
    assert node.running and first is not None
    node.pause()
    wait_for(lambda: proc_state(first) == "T")
    assert node.paused
    node.resume()
    wait_for(lambda: proc_state(first) != "T")
    node.kill()
    assert not node.running and node.crashed() is None  # we killed it: no crash
    node.start()
    assert node.running and node.pid != first and node.starts == 2
    node.pause()
    node.stop(timeout_s=5)  # resumes first, else SIGTERM would wait forever
    assert not node.running and node.crashed() is None
    log = (tmp_path / "n.log").read_text()
    assert len(re.findall(r"^---- \S+ start \d", log, re.MULTILINE)) == 2
    assert "serve --config" in log


def test_a_node_exiting_on_its_own_is_a_crash_reported_once(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; print('boom'); sys.exit(70)"]
    cluster = Cluster(
        [NodeSpec("node-1", "127.0.0.1", 1, 2)], cmd, tmp_path / "c", tmp_path / "logs"
    )
    cluster.start_all()
    node = cluster.nodes["node-1"]
    wait_for(lambda: not node.running)
    crashes = cluster.reap_crashes(at=1.5)
    assert [(c.node_id, c.returncode, c.at) for c in crashes] == [("node-1", 70, 1.5)]
    assert "boom" in crashes[0].log_tail
    assert cluster.reap_crashes(at=2.0) == []


@pytest.mark.parametrize("paused", [False, True])
def test_stop_all_leaves_nothing_running(tmp_path: Path, paused: bool) -> None:
    specs = [NodeSpec(f"node-{i}", "127.0.0.1", i, i + 10) for i in (1, 2)]
    cluster = Cluster(specs, SLEEPER, tmp_path / "c", tmp_path / "logs")
    cluster.start_all()
    if paused:
        cluster.nodes["node-2"].pause()
    cluster.stop_all()
    assert not any(n.running for n in cluster.nodes.values())
    assert cluster.reap_crashes(at=0) == []


def test_a_node_dies_with_the_chaos_process(tmp_path: Path) -> None:
    log = str(tmp_path / "n.log")
    script = (
        "import time; from pathlib import Path\n"
        "from raftkv.chaos.cluster import NodeProcess, NodeSpec\n"
        f"spec = NodeSpec('node-1', '127.0.0.1', 1, 2)\n"
        f"node = NodeProcess(spec, {SLEEPER!r}, Path('c'), Path({log!r}))\n"
        "node.start(); print(node.pid, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    with parent.stdout:
        try:
            child = int(parent.stdout.readline())
            assert proc_state(child) in "RS"
        finally:
            parent.send_signal(signal.SIGKILL)  # no cleanup code can run: only the kernel helps
            parent.wait()

    def gone() -> bool:  # dead: no entry any more, or a zombie waiting for init to reap it
        try:
            return proc_state(child) == "Z"
        except FileNotFoundError:
            return True

    wait_for(gone)


def test_log_lines_finds_the_refusals_a_lagging_member_logged(tmp_path: Path) -> None:
    refusal = "inbound_refused reason=\"node 'node-6' is not a member of the live configuration\""
    # Built in the child: the log's header line holds the command itself.
    cmd = [sys.executable, "-c", f"print('started'); print('inbound_' + {refusal[8:]!r})"]
    cluster = Cluster(
        [NodeSpec("node-2", "127.0.0.2", 1, 2)], cmd, tmp_path / "c", tmp_path / "logs"
    )
    cluster.start_all()
    node = cluster.nodes["node-2"]
    wait_for(lambda: not node.running)
    assert node.log_lines("inbound_refused") == [refusal]
    assert node.log_lines("nothing like this") == []
