"""server/background.py: the task lives exactly as long as the block."""

from __future__ import annotations

import asyncio

import pytest

from raftkv.server.background import running


def test_the_task_runs_inside_the_block_and_is_cancelled_at_its_end() -> None:
    started = asyncio.Event()
    cancelled: list[bool] = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> None:
        async with running(forever(), "test-loop"):
            await asyncio.wait_for(started.wait(), 5)
            assert not cancelled
        assert cancelled == [True]
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "test-loop"]

    asyncio.run(main())


def test_an_error_in_the_block_still_stops_the_task() -> None:
    stopped: list[bool] = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append(True)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="boom"):
            async with running(forever(), "test-loop"):
                await asyncio.sleep(0)
                raise RuntimeError("boom")
        assert stopped == [True]

    asyncio.run(main())
