"""`running`: a background task that lives exactly as long as an `async with` block.

Rules: the task is cancelled and awaited when the block ends (normally or not), so an app's
cleanup context never leaves a loop running behind it; its cancellation is not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any


@contextlib.asynccontextmanager
async def running(coro: Coroutine[Any, Any, object], name: str) -> AsyncIterator[None]:
    task = asyncio.create_task(coro, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
