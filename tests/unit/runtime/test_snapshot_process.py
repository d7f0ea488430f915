"""Snapshots built by the builder process (runtime/snapshot_process.py), on one in-process node.

- The build runs in another process, and the node's snapshot is a complete, verified file.
- A builder that reports an error (here EISDIR: the temporary file's name is taken by a
  directory) stops the node with a storage failure naming the operation, the file and the
  errno; nothing is compacted.
- A builder killed mid-write stops the node with a storage failure naming the builder and the
  signal; no file exists under the build's final name (only its `*.tmp`); restarted, the node
  recovers: the temporary file is gone, every acknowledged write is there, and the next
  snapshot is built by a new builder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest

from raftkv.runtime.api import NodeStopping
from raftkv.runtime.node import RaftKVNode
from raftkv.storage.failure import StorageFailure
from raftkv.storage.snapshot_builder import PAUSE_ENV
from raftkv.storage.snapshot_file import verify_snapshot_file
from tests.unit.runtime.test_driver_storage import options, started, write_until_fatal
from tests.unit.server.fakes import aio


async def wait_until(what: str, cond: object, timeout_s: float = 30.0) -> None:
    assert callable(cond)
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.01)  # polling a file / flag: nothing to await on


async def write_until_paused(node: RaftKVNode, pause: Path, writes: int) -> dict[str, str]:
    """Write up to `writes` keys until the builder pauses (PAUSE_ENV); the acknowledged ones."""
    acked: dict[str, str] = {}
    while not Path(f"{pause}.paused").exists():
        if len(acked) < writes:
            i = len(acked)
            await node.put(f"k{i}", f"v{i}")
            acked[f"k{i}"] = f"v{i}"
        else:
            await wait_until("the builder to pause", Path(f"{pause}.paused").exists)
    return acked


def snapshot_files(node: RaftKVNode) -> list[str]:
    return sorted(p.name for p in (node.driver.opts.data_dir / "snapshots").iterdir())


@aio
async def test_the_builder_process_writes_the_snapshot(tmp_path: Path) -> None:
    node = await started(tmp_path, snapshot_every=20)
    d = node.driver
    for i in range(20):
        await node.put(f"k{i}", f"v{i}")
    await wait_until("a snapshot", lambda: d._last_snapshot_index > 0 and not d._snapshotting)
    assert d._builder is not None and d._builder.pid not in (None, os.getpid())
    snap = Path(d.storage.snapshot().data.decode())
    header = verify_snapshot_file(snap)
    assert header.index == d._last_snapshot_index and header.conf == d.sm.conf
    pid = d._builder.pid
    await node.stop()
    assert pid is not None
    with pytest.raises(ProcessLookupError):  # stopped with the node, and reaped
        os.kill(pid, 0)


@aio
async def test_a_builder_error_stops_the_node_naming_operation_file_and_errno(
    tmp_path: Path,
) -> None:
    node = await started(tmp_path, snapshot_every=5)
    d = node.driver
    (d.opts.data_dir / "snapshots" / "building.tmp.tmp").mkdir()  # open(..., "wb"): EISDIR
    exc = await write_until_fatal(node, 5)
    assert isinstance(exc, StorageFailure)
    assert "storage failure: snapshot build " in str(exc), exc
    assert "building.tmp: EISDIR (Is a directory)" in str(exc), exc
    assert d.durable.stats().snapshot_index == 0  # nothing compacted
    with pytest.raises(NodeStopping):
        await node.put("after", "x")
    await node.stop()


@aio
async def test_a_builder_killed_mid_write_leaves_no_file_under_the_final_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pause = tmp_path / "pause"
    monkeypatch.setenv(PAUSE_ENV, f"{pause}:30")  # the builder inherits it
    node = await started(tmp_path, snapshot_every=60)
    d = node.driver
    acked = await write_until_paused(node, pause, 60)
    pid = int(Path(f"{pause}.paused").read_text())
    assert d._builder is not None and pid == d._builder.pid != os.getpid()
    assert "building.tmp.tmp" in snapshot_files(node)  # it is writing
    os.kill(pid, signal.SIGKILL)
    async with asyncio.timeout(10):
        exc = await d.fatal  # type: ignore[misc]
    assert isinstance(exc, StorageFailure)
    assert "storage failure: snapshot build " in str(exc), exc
    assert f"the snapshot builder process {pid} was killed by SIGKILL" in str(exc), exc
    # Only the temporary file: neither the builder's output name nor a snapshot file.
    assert snapshot_files(node) == ["building.tmp.tmp"]
    assert d.durable.stats().snapshot_index == 0
    await node.stop()
    d.sm.close()  # a failed node leaves its files as they are (a process exit closes them)

    monkeypatch.delenv(PAUSE_ENV)
    again = RaftKVNode(options(tmp_path, snapshot_every=60))
    await again.start()
    try:
        assert snapshot_files(again) == []  # recovery removed the torn temporary file
        for key, value in acked.items():
            assert await again.get(key, linearizable=True) == value, key
        for j in range(60):
            await again.put(f"again{j}", "x")
        a = again.driver
        await wait_until("a snapshot", lambda: a._last_snapshot_index > 0 and not a._snapshotting)
        assert a._builder is not None and a._builder.pid not in (None, pid)
        verify_snapshot_file(Path(a.storage.snapshot().data.decode()))
    finally:
        await again.stop()


@aio
async def test_a_stuck_builder_does_not_hold_up_the_nodes_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A builder stopped mid-build (SIGSTOP: it never replies, never reads EOF) is killed by
    the node's stop, which returns; a stop is not a storage failure."""
    pause = tmp_path / "pause"
    monkeypatch.setenv(PAUSE_ENV, f"{pause}:10")
    node = await started(tmp_path, snapshot_every=20)
    d = node.driver
    await write_until_paused(node, pause, 20)
    pid = int(Path(f"{pause}.paused").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        async with asyncio.timeout(15):
            await node.stop()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not d.failed
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)


@aio
async def test_a_builder_that_died_while_idle_is_replaced_not_a_storage_failure(
    tmp_path: Path,
) -> None:
    node = await started(tmp_path, snapshot_every=20)
    d = node.driver
    await wait_until("the builder started", lambda: d._builder is not None and d._builder.pid)
    assert d._builder is not None
    first = d._builder.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    for i in range(20):
        await node.put(f"k{i}", f"v{i}")
    await wait_until("a snapshot", lambda: d._last_snapshot_index > 0 and not d._snapshotting)
    assert not d.failed
    assert d._builder.pid not in (None, first)
    verify_snapshot_file(Path(d.storage.snapshot().data.decode()))
    await node.stop()
