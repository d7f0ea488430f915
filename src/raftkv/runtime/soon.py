"""Writes and ReadIndex reads without a coroutine (`runtime.api.SoonNode`): the fast HTTP
engine's hot path (issue 12) — no Task, no coroutine chain per request.

Rules:
- `propose_nowait` / `read_barrier_nowait` do exactly the synchronous part of
  `RaftDriver.propose` / `read_barrier` (the same admission gate, `check_serving`, core call,
  waiter, wake-up, coarse deadline), and return the waiter future. Whatever the coroutine
  would have to wait for (a full turn budget, no leader known, a dropped proposal, a lease
  index not applied yet) raises `MustWait` BEFORE anything was proposed or joined: the
  caller then uses the coroutine, which starts from the same state. A lease read whose index
  is applied returns None (read now), counted as `read_barrier` counts it.
- `proposal_settled` / `read_settled` are the coroutine's code after its `await`: the
  deadline removed, the same metrics, the same exceptions (TimeoutError ->
  OperationTimeout, or NoLeaderError for a read when no leader is known). A proposal lost to
  another leader's entry raises `RetryWrite` (the coroutine would propose again: the caller
  calls `write`, so the retry is the coroutine's, with its own bound).
- A cancelled future (the client went away) raises CancelledError, as the cancelled `await`.
- Loop thread only.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from raftkv.raft.errors import NotLeader, ProposalDropped
from raftkv.raft.types import Role
from raftkv.runtime.api import MustWait, NoLeaderError, OperationTimeout, RetryWrite
from raftkv.runtime.waiters import ProposalLost, bound, unbound

if TYPE_CHECKING:
    from raftkv.raft.rawnode import RawNode
    from raftkv.raft.types import Index
    from raftkv.runtime.admission import TurnGate
    from raftkv.runtime.metrics import DisabledMetrics, RuntimeMetrics
    from raftkv.runtime.options import NodeOptions
    from raftkv.runtime.waiters import ProposalWaiters, ReadWaiters
    from raftkv.storage.state_lmdb import LmdbState


class SoonCalls:
    """A mixin of `RaftDriver` (driver.py); it only uses the driver members declared below."""

    if TYPE_CHECKING:
        opts: NodeOptions
        raw: RawNode
        gate: TurnGate
        metrics: RuntimeMetrics | DisabledMetrics
        _wake: asyncio.Event
        _proposals: ProposalWaiters
        _reads: ReadWaiters
        sm: LmdbState

        def check_serving(self) -> None: ...

        def _lease_read_index(self) -> Index | None: ...

        def _schedule_pump(self) -> None: ...

    def propose_nowait(self, data: bytes) -> asyncio.Future[object]:
        """`propose` up to its await (module rules); MustWait when it would wait or retry."""
        if self.raw.raft.role is not Role.LEADER:
            raise MustWait  # NotLeader (forward) or no leader (wait): the coroutine's answers
        if not self.gate.try_enter():
            raise MustWait
        self.check_serving()
        try:
            term, index = self.raw.propose(data)
        except (NotLeader, ProposalDropped):  # the coroutine waits, retries or answers
            raise MustWait from None
        fut = self._proposals.add(term, index)
        self._wake.set()
        self._schedule_pump()
        bound(fut, max(0.001, self.opts.request_timeout_s))
        return fut

    def proposal_settled(self, fut: asyncio.Future[object]) -> object:
        """`propose` after its await: the apply result, or its exceptions (module rules)."""
        unbound(fut)
        try:
            result = fut.result()
        except TimeoutError:
            self.metrics.proposals_failed += 1
            raise OperationTimeout("entry not applied in time") from None
        except ProposalLost:
            self.metrics.proposals_dropped += 1
            raise RetryWrite from None
        except asyncio.CancelledError:
            raise
        except Exception:  # OperationTimeout, NodeStopping, NodeHalted: as propose
            self.metrics.proposals_failed += 1
            raise
        self.metrics.proposals_committed += 1
        return result

    def read_barrier_nowait(self, *, lease: bool = False) -> asyncio.Future[None] | None:
        """`read_barrier` up to its await (module rules); None: a lease read may run now
        (the lease's index is applied already), as `read_barrier` returns at once then."""
        self.check_serving()
        if lease and (index := self._lease_read_index()) is not None:
            if self.sm.applied_index < index:
                raise MustWait  # read_barrier's wait_applied
            self.metrics.lease_reads += 1
            return None
        if self.raw.leader is None or not self.gate.try_enter():
            raise MustWait
        fut, _, _ = self._reads.join()
        self._wake.set()
        self._schedule_pump()
        bound(fut, max(0.001, self.opts.request_timeout_s))
        return fut

    def read_settled(self, fut: asyncio.Future[None]) -> None:
        """`read_barrier` after its await: returns, or raises its exceptions."""
        unbound(fut)
        try:
            fut.result()
        except TimeoutError:
            if self.raw.leader is None:
                raise NoLeaderError("no leader to confirm the read") from None
            raise OperationTimeout("read not confirmed in time") from None
