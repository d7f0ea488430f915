"""ProposalWaiters: a reused index fails the displaced waiter at once (hole 10); ReadWaiters:
whether a ReadIndex round is still being asked (the driver holds the next batch meanwhile)."""

from __future__ import annotations

import asyncio

import pytest

from raftkv.raft.types import Index, Term
from raftkv.runtime.waiters import (
    SWEEP_S,
    ProposalLost,
    ProposalWaiters,
    ReadWaiters,
    await_within,
    deadlines,
    run_within,
)
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


@aio
async def test_await_within_returns_the_result_and_cancels_its_timer() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[object] = loop.create_future()
    loop.call_soon(fut.set_result, "applied")
    assert await await_within(fut, 10.0) == "applied"
    # Nothing stays registered (a leak per request), and the sweep timer stops once idle.
    assert len(deadlines()) == 0
    await asyncio.sleep(3 * SWEEP_S)
    assert not [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]


@aio
async def test_await_within_fails_the_waiter_after_the_delay() -> None:
    fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await await_within(fut, 0.01)
    assert fut.done()  # a late resolver sees a done future and skips it
    waiters = ProposalWaiters()
    late = waiters.add(Term(1), Index(7))
    with pytest.raises(TimeoutError):
        await await_within(late, 0.01)
    waiters.applied(Index(7), Term(1), "too late")  # must not raise InvalidStateError


@aio
async def test_run_within_returns_the_result_and_leaves_no_timer() -> None:
    async def quick() -> str:
        await asyncio.sleep(0)
        return "done"

    assert await run_within(quick(), 5.0) == "done"
    await asyncio.sleep(0.02)  # a timer left armed would cancel this task here
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


@aio
async def test_run_within_cancels_the_operation_and_raises_timeout_error() -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        await run_within(slow(), 0.01)
    assert cancelled.is_set()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the task goes on, uncancelled
    await asyncio.sleep(0)


@aio
async def test_run_within_lets_a_cancellation_from_elsewhere_through() -> None:
    started = asyncio.Event()

    async def caller() -> None:
        async def slow() -> None:
            started.set()
            await asyncio.sleep(10)

        await run_within(slow(), 5.0)

    task = asyncio.create_task(caller())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@aio
async def test_coarse_deadlines_never_fire_early_and_share_one_timer() -> None:
    loop = asyncio.get_running_loop()
    futs: list[asyncio.Future[object]] = [loop.create_future() for _ in range(50)]
    start = loop.time()
    waits = [asyncio.ensure_future(await_within(f, 0.05 + i * 0.001)) for i, f in enumerate(futs)]
    await asyncio.sleep(0)
    assert len(deadlines()) == 50
    scheduled = [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]
    assert len(scheduled) <= 1  # one sweep timer for all of them (asyncio's loop shows it)
    futs[0].set_result("early")
    assert await waits[0] == "early"
    for w in waits[1:]:
        with pytest.raises(TimeoutError):
            await w
    assert loop.time() - start >= 0.05 + 49 * 0.001  # the last one: not before its deadline
    assert len(deadlines()) == 0


@aio
async def test_a_round_is_asking_until_answered_or_a_tick_passed() -> None:
    w = ReadWaiters(b"n1")
    assert not w.asking(10.0, 0.025)
    fut, first, _ = w.join()
    assert not w.asking(10.0, 0.025)  # the open batch is not asked yet
    w.close_batch(10.0)
    assert w.asking(10.01, 0.025)  # asked and unanswered: the next batch waits
    assert not w.asking(10.03, 0.025)  # a tick later: its answer may be lost, ask anyway
    _, second, _ = w.join()
    assert w.asking(10.01, 0.025)  # the open second batch does not count, the first does
    w.read_state(first.context, Index(3), Index(3))
    assert fut.done()
    assert not w.asking(10.01, 0.025)  # answered: the held batch goes now
    w.close_batch(10.02)
    assert w.asking(10.03, 0.025)
    for f in second.futures:
        f.cancel()  # every reader of the asked batch left: nothing to wait for
    assert not w.asking(10.03, 0.025)
