"""The driver and storage failures, on one in-process node (snapshots built on its thread; the
builder process: test_snapshot_process.py).

- A storage error while saving the log stops the node (fatal = StorageFailure); the write that
  hit it is not acknowledged, and `stop()` writes nothing afterwards (no save, sync or close).
- A storage error while building a snapshot stops the node and nothing is compacted (hole 2);
  from then on the node takes no request (its Ready loop still runs until the stop).
- `stop()` waits for a snapshot build still running in its thread before closing LMDB (hole 9).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from raftkv.raft.types import NodeId
from raftkv.runtime.api import NodeStopping, OperationTimeout
from raftkv.runtime.node import RaftKVNode
from raftkv.runtime.options import NodeOptions
from raftkv.storage.failure import StorageFailure
from tests.unit.server.fakes import aio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def options(tmp_path: Path, **kw: Any) -> NodeOptions:
    nid = NodeId("n1")
    return NodeOptions(
        node_id=nid,
        cluster_name="unit",
        data_dir=tmp_path / "n1",
        raft_listen=("127.0.0.1", free_port()),
        raft_advertise="127.0.0.1:1",
        http_advertise="127.0.0.1:2",
        peers_raft={nid: ("127.0.0.1", 1)},
        peers_http={nid: "127.0.0.1:2"},
        bootstrap_id=nid,
        tick_ms=10.0,
        **kw,
    )


async def started(tmp_path: Path, **kw: Any) -> RaftKVNode:
    node = RaftKVNode(options(tmp_path, **kw))
    await node.start()
    async with asyncio.timeout(10):
        await node.put("warm", "up")  # leader elected, log working
    return node


async def write_until_fatal(node: RaftKVNode, writes: int) -> BaseException:
    """Write until the node fails (at most `writes`); the failure it stopped on."""
    for i in range(writes):
        try:
            await node.put(f"k{i}", "v")
        except (OperationTimeout, NodeStopping):  # a write after the failure is refused
            break
    assert node.driver.fatal is not None
    async with asyncio.timeout(10):
        return await node.driver.fatal


def eio(*_: object, **__: object) -> None:
    raise OSError(errno.EIO, "Input/output error")


@aio
async def test_log_save_failure_stops_node_and_nothing_written_after(tmp_path: Path) -> None:
    node = await started(tmp_path)
    d = node.driver
    d.durable.save = eio  # type: ignore[method-assign]
    with pytest.raises(OperationTimeout):
        await node.put("k", "v")
    assert d.fatal is not None and d.fatal.done()
    exc = d.fatal.result()
    assert isinstance(exc, StorageFailure)
    assert "EIO (Input/output error)" in str(exc) and "raft.db" in str(exc)
    calls: list[str] = []
    d.sm.sync = lambda: calls.append("sync")  # type: ignore[method-assign]
    d.durable.close = lambda: calls.append("close")  # type: ignore[method-assign]
    await node.stop()
    assert calls == []
    assert node.driver.sm.get("k") is None
    node.driver.sm.close()


@aio
async def test_snapshot_build_failure_stops_node_without_compaction(tmp_path: Path) -> None:
    node = await started(tmp_path, snapshot_every=5, snapshot_builder="thread")
    d = node.driver
    d.sm.build_snapshot = eio  # type: ignore[method-assign,assignment]
    exc = await write_until_fatal(node, 5)
    assert isinstance(exc, StorageFailure) and "snapshot build" in str(exc)
    assert d.durable.stats().snapshot_index == 0  # the log was not compacted
    # Nothing is taken after the failure: no write acknowledged, no read served.
    with pytest.raises(NodeStopping):
        await node.put("after", "x")
    with pytest.raises(NodeStopping):
        await node.get("k0", linearizable=True)
    assert node.driver.sm.get("after") is None
    assert not node.is_ready()  # /ready 503: load balancers stop sending it requests
    await node.stop()


@aio
async def test_stop_waits_for_a_snapshot_build_in_its_thread(tmp_path: Path) -> None:
    node = await started(tmp_path, snapshot_every=3, snapshot_builder="thread")
    d = node.driver
    real_build = d.sm.build_snapshot
    entered, release = threading.Event(), threading.Event()
    finished: list[bool] = []

    def slow_build(dest: Path) -> Any:
        entered.set()
        release.wait(10)
        out = real_build(dest)  # uses an LMDB read transaction: must not outlive close()
        finished.append(True)
        return out

    d.sm.build_snapshot = slow_build  # type: ignore[method-assign]
    for i in range(3):
        await node.put(f"k{i}", "v")
    assert await asyncio.to_thread(entered.wait, 10)
    closed_before_build: list[bool] = []
    real_close = d.sm.close
    d.sm.close = lambda: (closed_before_build.append(not finished), real_close())  # type: ignore[method-assign,func-returns-value]
    stopping = asyncio.create_task(node.stop())
    await asyncio.sleep(0)
    release.set()
    await stopping
    assert closed_before_build == [False]


@aio
async def test_old_snapshots_are_removed_off_the_loop_thread(tmp_path: Path) -> None:
    """A large snapshot file's unlink is tens of milliseconds of file-system work: never on the
    event loop's thread, where it would delay ticks and heartbeats."""
    node = await started(tmp_path, snapshot_every=3)
    d = node.driver
    loop_thread = threading.get_ident()
    real_prune = d._prune_snapshots
    pruned_on: list[int] = []

    def recorded(keep: int) -> None:
        pruned_on.append(threading.get_ident())
        real_prune(keep)

    d._prune_snapshots = recorded  # type: ignore[method-assign]
    # Writes until three snapshots were pruned: on a loaded box builds coalesce (none starts
    # while one runs), so a fixed number of writes may make fewer than three.
    i = 0
    async with asyncio.timeout(30):
        while len(pruned_on) < 3 or d._snapshotting:
            if len(pruned_on) < 3:
                await node.put(f"k{i}", "v")
                i += 1
            else:
                await asyncio.sleep(0.01)
    assert loop_thread not in pruned_on
    assert len(sorted((d.opts.data_dir / "snapshots").glob("snap-*.snap"))) == 2
    await node.stop()
