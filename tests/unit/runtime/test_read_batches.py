"""ReadIndex batches are asked only once closed (thesis §6.4), and their contexts are unique per
process (runtime/waiters.py rules).

The chaos runs of 2026-12-03 found stale linearizable reads on followers: the open batch (still
taking reads) was re-asked by `overdue()` (every tick) or `unanswered()` (on a leader change)
while the previous round was in flight, so reads that joined it afterwards were answered with
an index the leader had picked before they arrived. The last test is a seeded model of the
driver's batching against a stand-in leader; it fails at its first seed on the code before.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from raftkv.raft.errors import NotLeader
from raftkv.raft.types import Index, NodeId
from raftkv.runtime.driver import RaftDriver
from raftkv.runtime.waiters import ReadBatch, ReadWaiters
from tests.unit.runtime.test_features import _options
from tests.unit.server.fakes import aio


@aio
async def test_the_open_batch_is_never_reasked() -> None:
    w = ReadWaiters(b"n1.0")
    _, first, _ = w.join()
    w.close_batch(10.0)  # asked
    _, second, _ = w.join()  # open: takes reads until it is asked itself
    assert w.overdue(11.0, 0.1) == [first.context]
    assert w.unanswered() == [first.context]
    w.close_batch(11.0)
    assert second.context in w.overdue(12.0, 0.1)
    assert second.context in w.unanswered()


class _AskingRaw:
    """The core's `read_index`, recording whether the batch it asks for was still open."""

    def __init__(self, driver: RaftDriver) -> None:
        self.driver = driver
        self.asked: list[tuple[bytes, bool]] = []

    def read_index(self, ctx: bytes) -> None:
        batch = self.driver._reads.open_batch
        self.asked.append((ctx, batch is not None and batch.context == ctx))


def _driver(tmp_path: Path) -> RaftDriver:
    me = NodeId("n1")
    return RaftDriver(_options(tmp_path, {me: 1}, me))


@aio
async def test_a_held_batch_is_not_asked_by_the_overdue_or_leader_change_paths(
    tmp_path: Path,
) -> None:
    d = _driver(tmp_path)
    try:
        raw = _AskingRaw(d)
        d.raw = raw  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        d._reads.join()
        d._issue_reads()  # the first batch is asked
        _, held, _ = d._reads.join()  # held while the first is in flight
        d._issue_reads()
        assert [ctx for ctx, _ in raw.asked] != [] and held.context not in dict(raw.asked)
        # A tick finds the first one overdue; a leader change re-asks what is unanswered.
        d._reads_need_leader.extend(d._reads.overdue(loop.time() + 1.0, 0.1))
        d._reads_need_leader.extend(d._reads.unanswered())
        d._issue_reads()
        assert not any(was_open for _, was_open in raw.asked), raw.asked
        assert d._reads.open_batch is held  # still taking reads: not asked yet
        # Should its context be asked all the same, the batch closes first.
        d._reads_need_leader.append(held.context)
        d._issue_reads()
        assert not any(was_open for _, was_open in raw.asked), raw.asked
        assert d._reads.open_batch is None and held.context in dict(raw.asked)
    finally:
        d._writer.shutdown()
        d._sm_worker.shutdown()


@aio
async def test_contexts_differ_between_incarnations_of_a_node(tmp_path: Path) -> None:
    first, second = _driver(tmp_path), _driver(tmp_path)
    try:
        _, a, _ = first._reads.join()
        _, b, _ = second._reads.join()
        assert a.context != b.context  # same node, same counter: a restart never matches
        assert a.context.startswith(b"n1.") and b.context.startswith(b"n1.")
    finally:
        for d in (first, second):
            d._writer.shutdown()
            d._sm_worker.shutdown()


class _ModelRaw:
    """A leader stand-in: a ReadIndex request gets the commit index when it arrives."""

    def __init__(self) -> None:
        self.commit = 0
        self.has_leader = True
        self.in_flight: list[tuple[bytes, int]] = []

    def read_index(self, ctx: bytes) -> None:
        if not self.has_leader:
            raise NotLeader(None)
        self.in_flight.append((ctx, self.commit))


@aio
async def test_no_read_is_answered_with_an_index_from_before_it_arrived(tmp_path: Path) -> None:
    """A seeded model of the driver's read batching (joins, `_issue_reads`, ticks' re-asks,
    leader changes, answers, lost requests, writes) against §6.4: every read's index is at
    least the commit index when the read arrived."""
    d = _driver(tmp_path)
    try:
        loop = asyncio.get_running_loop()
        for seed in range(300):
            rnd = random.Random(seed)
            raw = _ModelRaw()
            d.raw = raw  # type: ignore[assignment]
            d._reads = ReadWaiters(f"n1.{seed}".encode())
            d._reads_need_leader = []
            reads: list[tuple[asyncio.Future[None], ReadBatch, int]] = []
            for _ in range(200):
                step = rnd.random()
                if step < 0.3:
                    fut, batch, _ = d._reads.join()
                    reads.append((fut, batch, raw.commit))
                elif step < 0.45:
                    raw.commit += 1  # a write is acknowledged
                elif step < 0.65:
                    d._issue_reads()
                elif step < 0.72:  # a tick, now or later
                    now = loop.time() + rnd.choice((0.0, 0.05, 0.2))
                    d._reads_need_leader.extend(d._reads.overdue(now, 0.1))
                elif step < 0.77:  # a leader change (or none known for a while)
                    raw.has_leader = rnd.random() < 0.8
                    if raw.has_leader:
                        d._reads_need_leader.extend(d._reads.unanswered())
                elif step < 0.95 and raw.in_flight:
                    ctx, index = raw.in_flight.pop(rnd.randrange(len(raw.in_flight)))
                    d._reads.read_state(ctx, Index(index), Index(10**9))
                elif raw.in_flight:
                    raw.in_flight.pop(rnd.randrange(len(raw.in_flight)))  # lost
            for fut, batch, arrived_at in reads:
                if fut.done():
                    assert batch.index is not None and batch.index >= arrived_at, (
                        f"seed {seed}: a read that arrived at commit {arrived_at} was "
                        f"answered with index {batch.index}"
                    )
                else:
                    fut.cancel()
    finally:
        d._writer.shutdown()
        d._sm_worker.shutdown()
