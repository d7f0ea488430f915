"""TurnGate: at most `per_turn` requests enter per event-loop turn, FIFO, cancellation-safe."""

from __future__ import annotations

import asyncio

import pytest

from raftkv.runtime.admission import TurnGate
from tests.unit.server.fakes import aio


async def _entrants(gate: TurnGate, n: int) -> tuple[list[int], list[int]]:
    """Start `n` tasks that enter the gate; returns (entry order, loop turn of each entry)."""
    order: list[int] = []
    turn_of: list[int] = [-1] * n
    turn = 0
    stop = False

    async def count_turns() -> None:
        nonlocal turn
        while not stop:
            await asyncio.sleep(0)  # one wake-up per loop turn
            turn += 1

    async def one(i: int) -> None:
        await gate.enter()
        order.append(i)
        turn_of[i] = turn

    counter = asyncio.create_task(count_turns())
    await asyncio.gather(*(one(i) for i in range(n)))
    stop = True
    await counter
    return order, turn_of


@aio
async def test_at_most_per_turn_enter_in_one_turn_and_in_order() -> None:
    gate = TurnGate(4)
    order, turn_of = await _entrants(gate, 10)
    assert order == list(range(10))  # FIFO: nobody overtakes an earlier waiter
    per_turn: dict[int, int] = {}
    for t in turn_of:
        per_turn[t] = per_turn.get(t, 0) + 1
    assert max(per_turn.values()) <= 4
    assert len(per_turn) >= 3  # 10 requests at 4 per turn need at least 3 turns
    assert gate.waited == 6
    assert len(gate) == 0


@aio
async def test_under_budget_enters_at_once() -> None:
    gate = TurnGate(8)
    order, turn_of = await _entrants(gate, 8)
    assert order == list(range(8))
    assert len(set(turn_of)) == 1
    assert gate.waited == 0


@aio
async def test_a_cancelled_waiter_is_skipped_and_uses_no_budget() -> None:
    gate = TurnGate(1)
    entered = asyncio.create_task(gate.enter())  # these three run in the same turn:
    first = asyncio.create_task(gate.enter())  # the first takes the budget, the others wait
    second = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    assert entered.done()
    assert len(gate) == 2
    first.cancel()
    await asyncio.wait_for(second, 1.0)  # released in the next turn, in first's place
    assert first.cancelled()


@aio
async def test_fail_all_fails_the_waiters() -> None:
    gate = TurnGate(1)
    entered = asyncio.create_task(gate.enter())
    waiter = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    assert entered.done() and not waiter.done()
    gate.fail_all(RuntimeError("stopping"))
    with pytest.raises(RuntimeError, match="stopping"):
        await waiter


def test_per_turn_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TurnGate(0)
