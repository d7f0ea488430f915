"""Fixtures of the transport tests: `run` executes a coroutine on the default loop AND uvloop.

Helpers shared by the test modules live in `transport_helpers.py` (conftest is not imported).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

T = TypeVar("T")


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """`run(coro)` runs a coroutine to completion on a fresh loop of the parametrized kind."""
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def _run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        async def main() -> T:
            async with asyncio.timeout(timeout):
                result = await coro
            # stop() must leave no task behind: only this one may remain.
            leftover = asyncio.all_tasks() - {asyncio.current_task()}
            assert not leftover, leftover
            return result

        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main())

    return _run
