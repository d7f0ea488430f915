"""Futures that wait on the Raft log: proposals (resolved on apply) and ReadIndex reads.

Rules:
- A proposal (term, index) resolves when the entry at `index` is applied: with its result if
  the applied entry has the proposal's term, else with `ProposalLost` — a different entry won
  that index, so ours can never commit (Log Matching, §5.3). A new proposal at an index that
  still has a waiter fails the old waiter with `ProposalLost` at once (retried, not left to
  time out).
- Reads of one loop turn share one ReadIndex context; a batch resolves once the read state
  arrives AND applied >= its index (thesis §6.4 step 4).
- A batch is asked only once it is closed: its ReadIndex must be requested AFTER every read in it
  arrived (thesis §6.4: the leader picks the index when the request reaches it). The open batch
  (still taking reads) is never in `unanswered()` or `overdue()`, which re-ask batches; a batch
  asked while open would hand a later read an index from before that read began (a stale read:
  found by the chaos runs, 2026-12-03).
- Contexts are unique per process, not only per node: `node_tag` carries a random incarnation
  part (driver.py), so an answer to a request of a previous incarnation of this node can never
  resolve a batch of this one.
- Timeouts of waits are coarse deadlines (`_Deadlines`): one loop timer sweeps them, so a
  timeout fires up to SWEEP_S late, never early; no per-wait timer handle.
- Everything here runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from raftkv.raft.types import Index, Term

T = TypeVar("T")


SWEEP_S: Final = 0.02  # how late a timeout may fire: one sweep period


class _Deadlines:
    """Coarse timeouts for many concurrent waits with ONE loop timer: a wait registers
    (deadline, action) in a dict and removes it when done; every SWEEP_S, while any wait is
    registered, a sweep runs the actions whose deadline passed. Registering and removing are
    dict operations (~0.2 µs), where under uvloop a timer handle costs 2.8 µs to create and
    cancel (measured here), twice per client request (issue 12). A timeout fires at most
    SWEEP_S late, never early; nothing stays registered after its wait ended."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = self.loop = loop
        self._due: dict[object, tuple[float, Callable[[Any], None], Any]] = {}
        self._armed = False

    def add(self, key: object, delay: float, action: Callable[[Any], None], arg: Any) -> None:
        self._due[key] = (self._loop.time() + delay, action, arg)
        if not self._armed:
            self._armed = True
            self._loop.call_later(SWEEP_S, self._sweep)

    def remove(self, key: object) -> None:
        self._due.pop(key, None)

    def _sweep(self) -> None:
        now = self._loop.time()
        for key in [k for k, (when, _, _) in self._due.items() if when <= now]:
            _, action, arg = self._due.pop(key)
            action(arg)
        self._armed = bool(self._due)
        if self._armed:
            self._loop.call_later(SWEEP_S, self._sweep)

    def __len__(self) -> int:
        return len(self._due)


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Deadlines] = (
    weakref.WeakKeyDictionary()
)


_last: _Deadlines | None = None  # the last loop's, found without a weak-dictionary lookup


def deadlines() -> _Deadlines:
    """The running loop's coarse timeouts (one per loop)."""
    global _last
    loop = asyncio.get_running_loop()
    if _last is not None and _last.loop is loop:
        return _last
    found = _by_loop.get(loop)
    if found is None:
        found = _by_loop[loop] = _Deadlines(loop)
    _last = found
    return found


async def await_within(fut: asyncio.Future[T], delay: float) -> T:
    """`await fut`, failing it with TimeoutError after `delay` seconds (up to SWEEP_S later).
    `fut` must be the caller's own waiter (the timeout fails it; every resolver here checks
    `done()` first). A coarse deadline, not `asyncio.timeout` (~40 µs per use here) nor a
    timer handle (2.8 µs): on every write and every linearizable read (issue 12)."""
    timers = deadlines()
    timers.add(fut, delay, _expire, fut)
    try:
        return await fut
    finally:
        timers.remove(fut)


def bound(fut: asyncio.Future[T], delay: float) -> None:
    """`await_within` without the await: fail `fut` with TimeoutError after `delay` seconds
    (up to SWEEP_S later) unless `unbound(fut)` is called first (the caller's callback
    must call it once `fut` is done, as await_within's `finally` does)."""
    deadlines().add(fut, delay, _expire, fut)


def unbound(fut: asyncio.Future[T]) -> None:
    deadlines().remove(fut)


def _expire(fut: asyncio.Future[T]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def run_within(operation: Awaitable[T], delay: float) -> T:
    """`await operation`, cancelling it and raising TimeoutError after `delay` seconds (up to
    SWEEP_S later): what `asyncio.timeout` does (a cancellation from elsewhere still propagates
    as one), on a coarse deadline instead of a context manager and a timer handle: on every
    client request (issue 12)."""
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("run_within needs a running task")
    deadline = _Deadline(task)
    timers = deadlines()
    timers.add(deadline, delay, _Deadline.fire, deadline)
    try:
        return await operation
    except asyncio.CancelledError:
        if deadline.fired and task.uncancel() == 0:
            raise TimeoutError from None  # ours, and nobody else asked to cancel the task
        raise
    finally:
        timers.remove(deadline)


class _Deadline:
    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        self.task.cancel()


class ProposalLost(Exception):
    """Our entry was overwritten by another leader's: it definitely did not take effect."""


@dataclass(slots=True)
class _Proposal:
    term: Term
    future: asyncio.Future[object]


class ProposalWaiters:
    def __init__(self) -> None:
        self._by_index: dict[Index, _Proposal] = {}

    def add(self, term: Term, index: Index) -> asyncio.Future[object]:
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        old = self._by_index.get(index)
        if old is not None and not old.future.done():
            # We lead again and our new entry took this index: the older entry was overwritten
            # in our log, and a leader's log holds every committed entry (Leader Completeness,
            # §5.4), so the older proposal never committed and never will: retry it now.
            old.future.set_exception(
                ProposalLost(f"entry {index} (term {old.term}) was replaced (term {term})")
            )
        self._by_index[index] = _Proposal(term, fut)
        return fut

    def applied(self, index: Index, term: Term, result: object) -> None:
        p = self._by_index.pop(index, None)
        if p is None or p.future.done():
            return
        if p.term == term:
            p.future.set_result(result)
        else:
            p.future.set_exception(ProposalLost(f"entry {index} was replaced (term {term})"))

    def fail_all(self, exc: BaseException) -> None:
        for p in self._by_index.values():
            if not p.future.done():
                p.future.set_exception(exc)
        self._by_index.clear()

    def __len__(self) -> int:
        return len(self._by_index)


@dataclass(slots=True)
class ReadBatch:
    context: bytes
    futures: list[asyncio.Future[None]] = field(default_factory=list)
    index: Index | None = None  # set when the ReadState arrives
    asked_at: float = 0.0  # loop time the ReadIndex was last requested


class ReadWaiters:
    """Read batches waiting first for their ReadState, then for the apply index."""

    def __init__(self, node_tag: bytes) -> None:
        self._tag = node_tag
        self._counter = itertools.count(1)
        self.open_batch: ReadBatch | None = None  # joins reads until the next Ready
        self._awaiting_state: dict[bytes, ReadBatch] = {}
        self._awaiting_apply: list[tuple[int, int, ReadBatch]] = []  # heap by index
        self._seq = itertools.count()

    def join(self) -> tuple[asyncio.Future[None], ReadBatch, bool]:
        """Add a read; returns (future, batch, is_new_batch)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        new = self.open_batch is None
        if self.open_batch is None:
            ctx = self._tag + b":" + str(next(self._counter)).encode()
            self.open_batch = ReadBatch(ctx)
            self._awaiting_state[ctx] = self.open_batch
        self.open_batch.futures.append(fut)
        return fut, self.open_batch, new

    def close_batch(self, now: float) -> None:
        """This turn's ReadIndex is being issued: later reads start a new batch."""
        if self.open_batch is not None:
            self.open_batch.asked_at = now
        self.open_batch = None

    def read_state(self, context: bytes, index: Index, applied: Index) -> None:
        batch = self._awaiting_state.pop(context, None)
        if batch is None:
            return
        batch.index = index
        if index <= applied:
            _resolve(batch)
        else:
            heapq.heappush(self._awaiting_apply, (index, next(self._seq), batch))

    def applied(self, applied: Index) -> None:
        while self._awaiting_apply and self._awaiting_apply[0][0] <= applied:
            _, _, batch = heapq.heappop(self._awaiting_apply)
            _resolve(batch)

    def unanswered(self) -> list[bytes]:
        """Contexts of asked batches still waiting for a ReadState (to re-ask after a leader
        change). Not the open batch: it is asked when it closes (module rules)."""
        return [
            ctx
            for ctx, b in self._awaiting_state.items()
            if b is not self.open_batch and any(not f.done() for f in b.futures)
        ]

    def overdue(self, now: float, after: float) -> list[bytes]:
        """Unanswered contexts last asked before `now - after`; marks them asked again now.

        A ReadIndexRequest can be lost with its connection; asking again is safe because the
        leader picks the read index when the request arrives (thesis §6.4).
        """
        out: list[bytes] = []
        for ctx, b in self._awaiting_state.items():
            if b is self.open_batch:
                continue  # not asked yet: it is asked when it closes (module rules)
            if b.asked_at <= now - after and any(not f.done() for f in b.futures):
                b.asked_at = now
                out.append(ctx)
        return out

    def asking(self, now: float, within: float) -> bool:
        """A batch asked less than `within` seconds ago still waits for its ReadState."""
        since = now - within
        return any(
            b is not self.open_batch and b.asked_at > since and not all(f.done() for f in b.futures)
            for b in self._awaiting_state.values()
        )

    def drop_done(self) -> None:
        for ctx in [c for c, b in self._awaiting_state.items() if all(f.done() for f in b.futures)]:
            del self._awaiting_state[ctx]

    def fail_all(self, exc: BaseException) -> None:
        batches = list(self._awaiting_state.values()) + [b for _, _, b in self._awaiting_apply]
        for b in batches:
            for f in b.futures:
                if not f.done():
                    f.set_exception(exc)
        self._awaiting_state.clear()
        self._awaiting_apply.clear()
        self.open_batch = None


class AppliedWaiters:
    """Futures waiting until the applied index reaches a given index (`min_revision` reads)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def wait(self, index: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (index, next(self._seq), fut))
        return fut

    def applied(self, applied: int) -> None:
        while self._heap and self._heap[0][0] <= applied:
            _, _, fut = heapq.heappop(self._heap)
            if not fut.done():
                fut.set_result(None)

    def fail_all(self, exc: BaseException) -> None:
        for _, _, fut in self._heap:
            if not fut.done():
                fut.set_exception(exc)
        self._heap.clear()


def _resolve(batch: ReadBatch) -> None:
    for f in batch.futures:
        if not f.done():
            f.set_result(None)
