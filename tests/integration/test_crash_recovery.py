"""Whole-cluster crash: kill -9 every node while writers write; nothing acknowledged is lost.

Each writer thread writes its own unique keys (sent once each, no retries), through all three
nodes (followers forward). A write is acknowledged only by a 200 reply. After every node is
killed -9 and restarted, each acknowledged key must be there with its value (read with the
default, linearizable consistency); a write whose outcome was unknown may be there or not, but
never with another value.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field

from tests.integration.cluster import NODE_IDS, Cluster, HttpError, MakeCluster, wait_for

WRITERS = 6


@dataclass
class Writer:
    n: int
    acked: dict[str, str] = field(default_factory=dict)
    unknown: dict[str, str] = field(default_factory=dict)
    refused: int = 0  # answered with an error that says "not applied" (503 no_leader ...)


def run_writer(
    c: Cluster, w: Writer, stop: threading.Event, nodes: tuple[str, ...] = NODE_IDS
) -> None:
    """Unique keys, each sent once, round-robin over `nodes` (test_forward_over_peer too)."""
    i = 0
    while not stop.is_set():
        key, value = f"w{w.n}:{i}", f"value-{w.n}-{i}"
        node = nodes[(w.n + i) % len(nodes)]
        try:
            reply = c.put(node, key, value)
        except HttpError as exc:
            if exc.sent:
                w.unknown[key] = value
            else:
                w.refused += 1
        else:
            if reply.status == 200:
                w.acked[key] = value
            elif reply.status == 503:
                w.refused += 1
            else:
                w.unknown[key] = value
        i += 1


def test_all_nodes_killed_under_concurrent_writes_lose_no_acked_write(
    make_cluster: MakeCluster,
) -> None:
    c = make_cluster()
    c.start()
    c.wait_ready()
    writers = [Writer(n) for n in range(WRITERS)]
    stop = threading.Event()
    threads = [threading.Thread(target=run_writer, args=(c, w, stop)) for w in writers]
    for t in threads:
        t.start()
    try:
        # Let the writers get going: every one of them has had writes acknowledged.
        wait_for(
            "acknowledged writes from every writer",
            lambda: all(len(w.acked) >= 30 for w in writers),
            60.0,
            c.dump_logs,
        )
        for node in c.nodes.values():
            assert node.proc is not None
            node.proc.send_signal(signal.SIGKILL)
        for node_id in c.nodes:
            c.kill(node_id, signal.SIGKILL)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)

    acked = {k: v for w in writers for k, v in w.acked.items()}
    unknown = {k: v for w in writers for k, v in w.unknown.items()}
    print(f"\n{len(acked)} writes acknowledged, {len(unknown)} unknown before the crash")

    c.start()
    leader = c.wait_ready()
    missing = []
    for i, (key, value) in enumerate(sorted(acked.items())):
        reply = c.get(NODE_IDS[i % 3], key)
        if reply.status != 200 or reply.json.get("value") != value:
            missing.append((key, value, str(reply)))
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    for key, value in unknown.items():
        reply = c.get(leader, key)
        assert reply.status in (200, 404), reply
        if reply.status == 200:
            assert reply.json["value"] == value

    # Every node has every acknowledged write in its own state once caught up.
    for node_id in c.nodes:
        c.wait_caught_up(node_id, leader)
        for key, value in list(sorted(acked.items()))[:: max(1, len(acked) // 100)]:
            reply = c.get(node_id, key, consistency="stale")
            assert reply.status == 200 and reply.json["value"] == value, (node_id, key, reply)
