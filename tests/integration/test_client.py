"""`raftkv.client` against real nodes: the basic API, both clients, and failover."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from raftkv.client import AsyncClient, Client, NotFound, OutcomeUnknown, RaftkvError
from tests.integration.cluster import Cluster, MakeCluster, free_port, wait_for

README = Path(__file__).resolve().parents[2] / "README.md"
SEED_ENDPOINTS = '["localhost:8081", "localhost:8082", "localhost:8083"]'


def endpoints(c: Cluster) -> list[str]:
    return [n.http for n in c.nodes.values()]


def readme_examples() -> list[str]:
    section = README.read_text().split("\n## Python client\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.parametrize("index", range(len(readme_examples())))
def test_readme_examples_run(shared_cluster: Cluster, index: int, tmp_path: Path) -> None:
    code = readme_examples()[index]
    assert SEED_ENDPOINTS in code
    script = tmp_path / f"example{index}.py"
    script.write_text(code.replace(SEED_ENDPOINTS, repr(endpoints(shared_cluster))))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr


def test_sync_client_basic_operations(shared_cluster: Cluster) -> None:
    key = "user:jöhn/profile x"  # ':' '/' ' ' and non-ASCII survive the URL
    with Client(endpoints(shared_cluster)) as kv:
        assert kv.put(key, "John Doe").key == key
        assert kv.get(key).value == "John Doe"
        assert kv.get(key, consistency="stale").text == "John Doe"
        assert kv.delete(key).key == key
        with pytest.raises(NotFound) as info:
            kv.get(key)
        assert info.value.key == key and info.value.status == 404
        with pytest.raises(NotFound):
            kv.delete(key)
        status = kv.status()
        assert status.cluster_size == 3 and status.leader in status.nodes
        leader_http = status.nodes[status.leader].http_address
        assert kv._engine.leader == f"http://{leader_http}"  # writes go straight to the leader


def test_async_client_concurrent_writes(shared_cluster: Cluster) -> None:
    async def main() -> None:
        async with AsyncClient(endpoints(shared_cluster)) as kv:
            await asyncio.gather(*(kv.put(f"async:{i}", str(i)) for i in range(50)))
            values = await asyncio.gather(*(kv.get(f"async:{i}") for i in range(50)))
            assert [v.text for v in values] == [str(i) for i in range(50)]
            with pytest.raises(NotFound):
                await kv.get("async:absent")

    asyncio.run(main())


def test_a_dead_endpoint_in_the_list_is_skipped(shared_cluster: Cluster) -> None:
    dead = f"127.0.0.1:{free_port('127.0.0.1', set())}"
    with Client([dead, *endpoints(shared_cluster)], timeout=5) as kv:
        kv.put("dead-endpoint", "ok")
        assert kv.get("dead-endpoint").value == "ok"


def test_writes_continue_when_the_leader_is_killed(make_cluster: MakeCluster) -> None:
    c = make_cluster()
    c.start()
    old_leader = c.wait_ready()
    acked: dict[str, str] = {}
    unknown: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    with Client(endpoints(c), timeout=15) as kv:

        def writer() -> None:
            i = 0
            while not stop.is_set():
                key, value = f"fo:{i}", f"v{i}"
                try:
                    kv.put(key, value)
                    acked[key] = value
                except OutcomeUnknown:
                    unknown.append(key)  # in flight when the leader died: allowed, reported
                except RaftkvError as exc:
                    failures.append(exc)
                    return
                i += 1

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            wait_for("20 writes before the kill", lambda: len(acked) >= 20 or failures)
            c.kill(old_leader, signal.SIGKILL)
            killed_at = len(acked) + len(unknown)
            wait_for(
                "40 writes after the kill",
                lambda: len(acked) + len(unknown) >= killed_at + 40 or failures,
            )
        finally:
            stop.set()
            thread.join(timeout=30)
        assert not failures, failures
        assert len(unknown) <= 2, unknown  # at most the write(s) in flight at the kill
        new_leader = c.wait_leader()
        assert new_leader != old_leader
        # The client learns the new leader (rediscovery is rate-limited, hence the poll).
        expected = f"http://{c.nodes[new_leader].http}"
        wait_for(
            "the client to send writes to the new leader",
            lambda: kv.put("fo:after", "x") and kv._engine.leader == expected,
        )

    with Client([c.nodes[n].http for n in c.nodes if n != old_leader]) as fresh:
        for key, value in acked.items():
            assert fresh.get(key).value == value, key


def test_reads_fail_over_when_the_node_in_use_dies(make_cluster: MakeCluster) -> None:
    c = make_cluster()
    c.start()
    c.wait_ready()
    with Client(endpoints(c), timeout=15) as kv:
        kv.put("r", "1")
        in_use = kv._engine.leader
        assert in_use is not None
        node = next(n for n in c.nodes.values() if f"http://{n.http}" == in_use)
        c.kill(node.id)
        started = time.monotonic()
        assert kv.get("r").value == "1"  # the next node answers once a new leader exists
        assert time.monotonic() - started < 15
