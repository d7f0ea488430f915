"""Rolling restart under a steady write load (issue 5): SIGTERM each node in turn, restart it.

A graceful stop hands leadership over first, refuses new requests with 503 and drains in-flight
writes, so a client that retries on 503, connection refused or reset for up to 2 s sees no failed
request, and no acknowledged write is lost. Each write uses a fresh key and value, so a retry
after an unknown outcome can at worst write the same value twice (a register: harmless).
"""

from __future__ import annotations

import signal
import threading
import time

from tests.integration.cluster import HttpError, MakeCluster

RETRY_BUDGET_S = 2.0


def _put_with_retry(c, nodes: list[str], start: int, key: str, value: str) -> str | None:  # type: ignore[no-untyped-def]
    """PUT, rotating over nodes; retry on 503/refused/reset for up to RETRY_BUDGET_S.
    Returns None on success, else the last error."""
    deadline = time.monotonic() + RETRY_BUDGET_S
    attempt = 0
    last = "no attempt"
    while time.monotonic() < deadline:
        node = nodes[(start + attempt) % len(nodes)]
        attempt += 1
        try:
            reply = c.put(node, key, value)
        except HttpError as exc:
            last = f"{node}: {exc}"
        else:
            if reply.status == 200:
                return None
            last = f"{node}: {reply}"
            if reply.status not in (503, 504):
                return last
        time.sleep(0.02)
    return last


def test_rolling_restart_under_load_loses_nothing(make_cluster: MakeCluster) -> None:
    c = make_cluster()
    c.start()
    c.wait_ready()
    nodes = sorted(c.nodes)
    acked: dict[str, str] = {}
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def writer(wid: int) -> None:
        i = 0
        while not stop.is_set():
            key, value = f"w{wid}:{i}", f"value-{wid}-{i}"
            err = _put_with_retry(c, nodes, wid + i, key, value)
            with lock:
                if err is None:
                    acked[key] = value
                else:
                    failures.append(f"{key}: {err}")
            i += 1

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(4)]
    for t in threads:
        t.start()
    try:
        for node in nodes:
            before = len(acked)
            t0 = time.monotonic()
            code = c.kill(node, signal.SIGTERM, wait_s=10.0)
            took = time.monotonic() - t0
            assert code == 0, f"{node} exited {code} on SIGTERM\n{c.dump_logs()}"
            assert took < 10.0
            c.start_node(node)
            leader = c.wait_ready()
            c.wait_caught_up(node, leader)
            # The load kept flowing across this restart.
            deadline = time.monotonic() + 10
            while len(acked) < before + 20 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(acked) >= before + 20, f"writes stalled around {node}'s restart"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert failures == [], failures[:5]
    assert len(acked) > 100
    leader = c.wait_ready()
    for key, value in acked.items():
        reply = c.get(leader, key)
        assert reply.status == 200 and reply.json["value"] == value, (key, str(reply))
