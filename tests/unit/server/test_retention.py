"""Automatic history retention: when the leader compacts, and that it really does."""

from __future__ import annotations

import asyncio

import pytest

from raftkv.kv.commands import Put
from raftkv.server import retention
from tests.unit.server.fakes import FakeNode, aio


def test_compaction_target_window_and_hysteresis() -> None:
    assert retention.compaction_target(100, 0, 0) is None  # off
    assert retention.compaction_target(100, 0, 100) is None  # within the window
    assert retention.compaction_target(109, 0, 100) is None  # exceeds by less than a tenth
    assert retention.compaction_target(110, 0, 100) == 10
    assert retention.compaction_target(115, 10, 100) is None
    assert retention.compaction_target(120, 10, 100) == 20
    assert retention.compaction_target(5, 0, 1) == 4


@aio
async def test_leader_compacts_beyond_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "PERIOD_S", 0.01)
    node = FakeNode()
    for i in range(30):
        await node.write(Put("k", str(i)))
    ctx = retention.retention_task(node, 10)(None)  # type: ignore[arg-type]
    await ctx.__anext__()
    try:
        async with asyncio.timeout(10):
            while node.state.compact_revision() == 0:
                await asyncio.sleep(0.01)
    finally:
        await ctx.aclose()
    assert node.state.compact_revision() == 20
