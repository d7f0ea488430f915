"""No read of any kind after a storage failure or once stopped; stale reads during a graceful
drain (runtime/node.py rules, halt.check_readable), on one in-process node.

- After a storage failure every read is refused with NodeStopping (503 `node_stopping`), stale
  ones included, on every entry point: `read` / `get`, `read_fence` (the read workers'
  fences), `read_soon` (the fast engine). `when_reads_refused` callbacks (the read workers')
  ran once, before the write that hit the failure saw its error.
- A read whose wait completed just before the failure is refused when it resumes.
- A graceful drain still serves stale reads (the listener is still open); linearizable ones are
  refused. Once `stop()` has begun, nothing is read (the state is closing).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from raftkv.runtime.api import NodeStopping, OperationTimeout
from tests.unit.runtime.test_driver_storage import eio, started
from tests.unit.server.fakes import aio


@aio
async def test_after_a_storage_failure_no_read_is_served_stale_included(tmp_path: Path) -> None:
    node = await started(tmp_path)
    d = node.driver
    assert await node.get("warm", linearizable=False) == "up"
    d.durable.save = eio  # type: ignore[method-assign]
    with pytest.raises(OperationTimeout):
        await node.put("k", "v")
    assert d.failed and d.halted is None
    with pytest.raises(NodeStopping):
        node.read_soon(linearizable=False)
    with pytest.raises(NodeStopping):
        await node.read_fence(linearizable=False)
    with pytest.raises(NodeStopping):
        await node.read_fence(linearizable=False, min_revision=1)  # applied long ago
    with pytest.raises(NodeStopping):
        await node.get("warm", linearizable=False)
    with pytest.raises(NodeStopping):
        await node.get("warm", linearizable=True)
    await node.stop()
    d.sm.close()  # stop() closes nothing after a failure (test_driver_storage.py)


@aio
async def test_read_listeners_hear_of_a_failure_before_its_replies(tmp_path: Path) -> None:
    node = await started(tmp_path)
    events: list[str] = []
    node.when_reads_refused(lambda: events.append(f"refused serving={node.serves_reads()}"))
    assert node.serves_reads()
    node.driver.durable.save = eio  # type: ignore[method-assign]
    with pytest.raises(OperationTimeout):
        await node.put("k", "v")
    events.append("write failed")
    # Told once, synchronously on the failure path: before the failed write's caller resumed
    # (the read workers stop serving before any client can learn of the failure).
    assert events == ["refused serving=False", "write failed"]
    assert not node.serves_reads()
    await node.stop()
    assert events == ["refused serving=False", "write failed"]  # not told again
    node.driver.sm.close()


@aio
async def test_a_read_whose_wait_ended_before_the_failure_is_refused_after_it(
    tmp_path: Path,
) -> None:
    node = await started(tmp_path)
    d = node.driver
    fut = node.read_soon(linearizable=True)
    assert fut is not None
    await asyncio.wait([fut])  # confirmed: a read could run now...
    d.durable.save = eio  # type: ignore[method-assign]
    with pytest.raises(OperationTimeout):
        await node.put("k", "v")
    with pytest.raises(NodeStopping):  # ...but the node failed before it did
        node.read_settled(fut)
    await node.stop()
    d.sm.close()


@aio
async def test_a_graceful_drain_serves_stale_reads_and_a_stopped_node_none(
    tmp_path: Path,
) -> None:
    node = await started(tmp_path)
    assert not await node.driver.hand_off(timeout_s=0.05)  # one node: nobody to hand over to
    assert node.driver.draining
    # Draining: the listener is still open and the state sound; stale reads are answered.
    assert await node.get("warm", linearizable=False) == "up"
    assert node.read_soon(linearizable=False) is None
    assert await node.read_fence(linearizable=False) >= 1
    with pytest.raises(NodeStopping):
        await node.get("warm", linearizable=True)
    await node.stop()
    # Stopped: the state is closed; a read is refused, never run on a closed environment.
    with pytest.raises(NodeStopping):
        node.read_soon(linearizable=False)
    with pytest.raises(NodeStopping):
        await node.get("warm", linearizable=False)
    assert not node.serves_reads()
