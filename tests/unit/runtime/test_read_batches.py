"""ReadIndex batches are asked only once closed (thesis §6.4), and their contexts are unique per
process (runtime/waiters.py rules).

The chaos runs of 2026-12-03 found stale linearizable reads on followers: the open batch (still
taking reads) was re-asked by `overdue()` (every tick) or `unanswered()` (on a leader change)
while the previous round was in flight, so reads that joined it afterwards were answered with
an index the leader had picked before they arrived.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from raftkv.raft.types import NodeId
from raftkv.runtime.driver import RaftDriver
from raftkv.runtime.waiters import ReadWaiters
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
