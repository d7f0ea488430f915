"""Bounded work per loop turn: at most `per_turn` client requests enter the core per turn.

Why (issue 12, c=256 stability): every request handler that resumes in one event-loop turn runs
before the loop looks at its timers again. With 256 clients a leader's turn held up to 256
proposals, then 256 replies and 256 new requests: tens of milliseconds of CPU, several times
that in wall time on a starved 2-core machine, during which the tick (heartbeats, §5.2) could not
run and followers started elections. Admitting a bounded number per turn keeps the turns short:
each Ready carries at most about `per_turn` new entries, so each commit wakes about that many
handlers, and the clients' next requests arrive at the same pace (wrk and real clients wait for
their reply). Throughput is unchanged: the excess waits one turn and still joins the same fsync
batch when the disk is the bottleneck.

Rules:
- FIFO: a request that had to wait is never overtaken by a later one.
- The fast path (budget left, nobody waiting) costs a counter and at most one `call_soon` per
  turn; a waiter costs one future. A cancelled waiter (client gone, request timeout) is
  skipped and uses no budget.
- A turn ends when the callback scheduled with `call_soon` runs: asyncio and uvloop run such a
  callback in the NEXT iteration, after the timers and I/O of that iteration.
- Loop thread only (like the core itself); no heartbeat or tick is moved to another thread.
"""

from __future__ import annotations

import asyncio
from collections import deque


class TurnGate:
    """At most `per_turn` entries per event-loop turn; the rest wait, in order, for later turns."""

    __slots__ = ("_scheduled", "_used", "_waiters", "per_turn", "waited")

    def __init__(self, per_turn: int) -> None:
        if per_turn < 1:
            raise ValueError("per_turn must be >= 1")
        self.per_turn = per_turn
        self._used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._scheduled = False
        self.waited = 0  # requests that had to wait at least one turn (a metric)

    def __len__(self) -> int:
        return len(self._waiters)

    def try_enter(self) -> bool:
        """Enter at once if the budget allows it (True); else nothing changes (False: `enter`)."""
        if self._used < self.per_turn and not self._waiters:
            self._used += 1
            self._schedule()
            return True
        return False

    async def enter(self) -> None:
        """Return when this request may go on (possibly at once)."""
        if self.try_enter():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.waited += 1
        self._schedule()
        await fut  # the budget was taken for us by `_new_turn`

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._new_turn)

    def _new_turn(self) -> None:
        self._scheduled = False
        self._used = 0
        waiters = self._waiters
        while waiters and self._used < self.per_turn:
            fut = waiters.popleft()
            if not fut.done():  # cancelled waiters are skipped
                fut.set_result(None)
                self._used += 1
        if self._used:
            # Those released now run in the next iteration: that turn's budget counts them.
            self._schedule()

    def fail_all(self, exc: BaseException) -> None:
        """Stopping: every waiter gets `exc`."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)
