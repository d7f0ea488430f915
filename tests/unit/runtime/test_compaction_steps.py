"""Freeing a compacted in-memory log: the entries a snapshot drops (100k at the default
`snapshot_every`) are handed back by `MemoryStorage.compact` and freed a step per loop turn,
never all in one turn (that was 8-16 ms of the loop thread at every snapshot)."""

from __future__ import annotations

import asyncio
from typing import Any

from raftkv.raft.storage import MemoryStorage
from raftkv.raft.types import Entry, Index, Term
from raftkv.runtime.snapshots import FREE_STEP, SnapshotSteps
from tests.unit.server.fakes import aio

freed: list[int] = []


class Tracked:
    """Stands for an entry's data; counts its own freeing."""

    def __del__(self) -> None:
        freed.append(1)


def test_compact_hands_back_the_dropped_entries_and_keeps_the_rest() -> None:
    s = MemoryStorage()
    s.append([Entry(Term(1), Index(i), data=b"%d" % i) for i in range(1, 101)])
    dropped = s.compact(Index(60))
    assert [e.index for e in dropped] == list(range(0, 61))  # the dummy at 0, then 1..60
    assert (s.first_index(), s.last_index(), s.term(Index(60))) == (61, 100, 1)
    assert [e.data for e in s.entries(Index(61), Index(101), 1 << 20)] == [
        b"%d" % i for i in range(61, 101)
    ]
    assert s.compact(Index(60)) == []  # nothing more to drop


@aio
async def test_dropped_entries_are_freed_a_step_per_loop_turn() -> None:
    n = 3 * FREE_STEP + 10
    freed.clear()
    dropped: list[Any] = [Entry(Term(1), Index(i), data=Tracked()) for i in range(n)]  # type: ignore[arg-type]

    def alive() -> int:
        return n - len(freed)

    steps = SnapshotSteps()
    steps._free_in_steps(dropped)
    assert alive() == n - FREE_STEP  # one step now, not everything
    turns = 0
    while alive():
        await asyncio.sleep(0)
        turns += 1
        assert turns < 10, "never freed"
    assert turns >= 3  # the rest took further loop turns
