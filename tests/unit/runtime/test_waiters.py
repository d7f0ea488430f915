"""ProposalWaiters: a reused index fails the displaced waiter at once (hole 10)."""

from __future__ import annotations

import asyncio

import pytest

from raftkv.raft.types import Index, Term
from raftkv.runtime.waiters import ProposalLost, ProposalWaiters
from tests.unit.server.fakes import aio


@aio
async def test_reused_index_fails_the_displaced_waiter_promptly() -> None:
    w = ProposalWaiters()
    old = w.add(Term(2), Index(5))
    new = w.add(Term(4), Index(5))
    assert old.done()
    with pytest.raises(ProposalLost):
        old.result()
    w.applied(Index(5), Term(4), "ok")
    assert await asyncio.wait_for(new, 1) == "ok"
    assert len(w) == 0
