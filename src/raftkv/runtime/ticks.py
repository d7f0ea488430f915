"""The driver's clock: one Raft tick per heartbeat interval, and the lease clock's honesty.

Rules:
- One tick per interval, never in bursts: after a stall (CPU starvation, a SIGSTOP) we tick
  once, not once per missed interval, so a node whose loop was blocked first reads the
  heartbeats waiting in its sockets instead of starting an election on ticks no message could
  have reset. Raft time then runs slow under load: safe for elections.
- Not for a leader lease (thesis §6.4.1), which must expire in real time: when a tick comes so
  late that the schedule restarts, the periods it jumped over are reported to the core
  (`clock_skipped`, rounded up), so the lease clock never counts fewer periods than passed.
- A due tick is delivered before the next peer message is stepped (`_tick_if_due`), so a
  follower never counts a leader's heartbeat as heard in a tick period that is already over:
  its lease promise then covers `election_ticks - 1` whole periods (raft/lease.py).
- Between ticks the core's clock is only current until the next tick is due: a lease read is
  decided only while that tick is not due (checked before and after asking the core, so a
  pause in between cannot slip through); otherwise the read falls back to ReadIndex.
- A mixin of `RaftDriver` (driver.py), split out to keep that module small; it only uses the
  driver members declared below.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

import structlog

from raftkv.raft.errors import InvariantViolation
from raftkv.raft.types import Index, NodeId, Role

if TYPE_CHECKING:
    from raftkv.raft.rawnode import RawNode
    from raftkv.runtime.options import NodeOptions
    from raftkv.runtime.waiters import ReadWaiters

log = structlog.get_logger("raftkv.runtime")

# A lease read is decided only this far (s) ahead of the next tick: uvloop's clock has
# millisecond resolution.
LEASE_GUARD_S = 0.002


class TickLoop:
    if TYPE_CHECKING:
        opts: NodeOptions
        id: NodeId
        raw: RawNode
        _reads: ReadWaiters
        _reads_need_leader: list[bytes]
        _wake: asyncio.Event
        _hold_elections_until: float
        _bootstrap_until: float
        _now: float

        def _die(self, exc: BaseException) -> None: ...
        def _schedule_pump(self) -> None: ...

    _next_tick_at = 0.0  # loop time the next tick is due (0: not ticking yet: no lease)
    _last_stall_log = 0.0

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        self._next_tick_at = loop.time() + self.opts.tick_ms / 1000.0
        while True:
            await asyncio.sleep(max(0.0, self._next_tick_at - loop.time()))
            if not self._tick_if_due():
                return

    def _tick_if_due(self) -> bool:
        """Deliver the tick if it is due (from the tick task, or before a peer message is
        stepped: ticks and messages then reach the core in time order). False if the node died."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self._next_tick_at or now < self._next_tick_at:
            return True
        period = self.opts.tick_ms / 1000.0
        late = now - self._next_tick_at
        next_at = self._next_tick_at + period
        skipped = 0
        if next_at < now:
            # Late by more than a period: restart the schedule from now. The core's lease clock
            # must still cover the time that passed (n_next - n_this = late + period).
            next_at = now + period
            skipped = math.ceil(late / period)
        self._next_tick_at = next_at
        if late > 2 * period and now - self._last_stall_log > 1.0:
            self._last_stall_log = now
            log.warning("event loop stalled", node=self.id, late_ms=round(late * 1000, 1))
        try:
            self.raw.clock_skipped(skipped)
            self._tick(loop)
        except InvariantViolation as exc:
            self._die(exc)
            return False
        except Exception as exc:  # the tick must never die silently
            log.error("tick failed", node=self.id, error=repr(exc))
        return True

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        period = self.opts.tick_ms / 1000.0
        self._now = loop.time()
        if self._hold_elections_until:
            if loop.time() < self._hold_elections_until and self.raw.status().leader is None:
                # No election timeout while the bootstrap node starts; the promise timer runs,
                # so this node can grant the bootstrap node's vote.
                self.raw.tick_held()
                return
            self._hold_elections_until = 0.0
        self.raw.tick()
        self._schedule_pump()
        self._reads_need_leader.extend(self._reads.overdue(loop.time(), 4 * period))
        if self._bootstrap_until and loop.time() < self._bootstrap_until:
            st = self.raw.status()
            if st.leader is None and st.role is not Role.CANDIDATE:
                self.raw.campaign()  # fresh cluster: the bootstrap node leads first
            else:
                self._bootstrap_until = 0.0
        self._wake.set()

    def _lease_read_index(self) -> Index | None:
        """The read index from the leader's lease, if it holds one and the core's clock is
        current (the next tick is not yet due, before and after asking); else None."""
        loop = asyncio.get_running_loop()
        if not self._tick_if_due():  # a tick overdue under load: catch up rather than give up
            return None
        due = self._next_tick_at - LEASE_GUARD_S
        if loop.time() >= due:
            return None
        index = self.raw.lease_read_index()
        if index is None or loop.time() >= due:
            return None
        return index
