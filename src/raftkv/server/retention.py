"""Automatic history retention: the leader compacts revisions older than the configured window.

Rules:
- The window is `storage.history_revisions`. Runs on every node, acts only on the one that
  believes it leads (a compaction is an ordinary committed `Compact` command, so a stale
  leader's attempt simply fails to commit or is a no-op).
- Compacts to `revision - history_revisions` once history exceeds the bound by a tenth (at least
  one revision), so it proposes one compaction per tenth of the window, not one per write.
- Never blocks or fails the server: errors are logged and retried at the next period.
- `history_revisions = 0` turns it off (history kept until `POST /compact`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Final

import structlog
from aiohttp import web

from raftkv.kv.commands import Compact
from raftkv.kv.mvcc import MVCCStore
from raftkv.runtime.api import ROLE_LEADER, KVNode
from raftkv.server.background import running

log = structlog.get_logger(__name__)

PERIOD_S: Final = 1.0


def compaction_target(revision: int, compacted: int, keep: int) -> int | None:
    """The revision to compact to, or None while history is within the bound."""
    if keep <= 0:
        return None
    target = revision - keep
    if target - compacted < max(1, keep // 10):
        return None
    return target


async def _loop(node: KVNode, keep: int) -> None:
    def meta(store: MVCCStore) -> tuple[int, int]:
        return store.revision(), store.compact_revision()

    while True:
        await asyncio.sleep(PERIOD_S)
        if node.local_status().role != ROLE_LEADER:
            continue
        try:
            revision, compacted = await node.read(meta, linearizable=False)
            target = compaction_target(revision, compacted, keep)
            if target is not None:
                await node.write(Compact(target))
                log.info("history compacted", revision=target)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # retried next period; never takes the server down
            log.warning("automatic compaction failed", error=repr(exc))


def retention_task(node: KVNode, keep: int) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup context running the retention loop while the app runs."""

    async def ctx(_app: web.Application) -> AsyncIterator[None]:
        async with running(_loop(node, keep), "history-retention"):
            yield

    return ctx
