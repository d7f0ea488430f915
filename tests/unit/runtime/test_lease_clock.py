"""The driver's side of the leader lease (runtime/ticks.py), on one in-process node.

- A stalled loop delivers one late tick, not a burst (elections run slow), but the lease clock
  counts every tick period that passed (a lease must expire in real time).
- `read(lease=True)` is served from the lease (a one-voter cluster always holds it) and counted.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.unit.runtime.test_driver_storage import started
from tests.unit.server.fakes import aio

TICK_S = 0.010  # started() runs the node with 10 ms ticks


@aio
async def test_a_stalled_loop_still_counts_every_period_for_the_lease(tmp_path: Path) -> None:
    node = await started(tmp_path, lease_ticks=1)
    try:
        raft = node.driver.raw.raft
        loop = asyncio.get_running_loop()
        clock0, elapsed0, t0 = raft.clock, raft.election_elapsed, loop.time()
        time.sleep(20 * TICK_S)  # block the event loop: no tick can run
        assert node.driver._tick_if_due()
        periods = int((loop.time() - t0) / TICK_S)
        assert raft.clock - clock0 >= periods - 1  # the lease clock saw the stall ...
        assert raft.election_elapsed - elapsed0 <= 1  # ... the election timer one tick of it
    finally:
        await node.stop()


@aio
async def test_lease_read_on_a_one_voter_cluster_is_served_from_the_lease(
    tmp_path: Path,
) -> None:
    node = await started(tmp_path, lease_ticks=1)
    try:
        await node.put("k", "v")
        before = node.driver.metrics.lease_reads
        got = await node.read(lambda s: s.get("k"), linearizable=True, lease=True)
        assert got is not None and got.value == "v"
        assert node.driver.metrics.lease_reads == before + 1
    finally:
        await node.stop()


@aio
async def test_a_lease_read_without_a_coroutine_reads_now(tmp_path: Path) -> None:
    """`read_soon(lease=True)` (runtime/soon.py) with the lease held and its index applied:
    None (read now), counted as a lease read. (A tick due at that instant gives a ReadIndex
    fence instead, as read_barrier would: then try again.)"""
    node = await started(tmp_path, lease_ticks=1)
    try:
        await node.put("k", "v")
        before = node.driver.metrics.lease_reads
        fence = None
        for _ in range(100):  # the lease's clock must be current: a tick may be due
            fence = node.read_soon(linearizable=True, lease=True)
            if fence is None:
                break
            await asyncio.wait([fence])
            node.read_settled(fence)
        assert fence is None
        assert node.driver.metrics.lease_reads == before + 1
    finally:
        await node.stop()
