"""The driver's persist step: the writer thread's save, and the acks it releases.

Rules:
- Every log save runs on the ONE writer thread (`_writer`), never on the loop thread: even a
  short fdatasync there stalls every other request (ARCHITECTURE §3).
- Durable before acknowledged (§3.8; raft-rs's `persisted_messages`): the writer thread saves,
  and only once `save` returned does it send the Ready's persisted messages (append acks, vote
  grants): itself, on a plain-TCP connection the loop is not writing to
  (`PeerTransport.send_from_thread`), so the ack leaves without waking the loop (issue 12:
  one thread wake-up less on a write's critical path); the rest it hands to the loop with
  `call_soon_threadsafe`, sent in the loop's first callback after the fsync. Either way before
  the Ready's coroutine resumes, so the order relative to applying and `advance`, which follow
  in that coroutine, is unchanged.
- A save that raises hands nothing over; the error comes back as a `StorageFailure` and stops
  the node (fsyncgate: never retried). Acks that reach the loop after the node failed, halted
  or began stopping are dropped: nothing is acknowledged after a failure.
- A mixin of `RaftDriver` (driver.py), split out to keep that module small; it only uses the
  driver members declared below.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raftkv.raft.messages import AnyMessage, AppendEntries
from raftkv.raft.types import Entry, HardState, SnapshotMeta
from raftkv.runtime.metrics import timed
from raftkv.storage.failure import wrap

if TYPE_CHECKING:
    from raftkv.runtime.api import HaltReport
    from raftkv.runtime.metrics import DisabledMetrics, RuntimeMetrics
    from raftkv.storage.raftlog import DurableLog
    from raftkv.transport.tcp import PeerTransport


def notices_only(msgs: tuple[AnyMessage, ...]) -> bool:
    """Appends that carry no entries: a commit index or a heartbeat, nothing to replicate."""
    return all(type(m) is AppendEntries and not m.entries for m in msgs)


class PersistSteps:
    if TYPE_CHECKING:
        durable: DurableLog
        transport: PeerTransport
        metrics: RuntimeMetrics | DisabledMetrics
        halted: HaltReport | None
        _loop: asyncio.AbstractEventLoop
        _stopping: bool

        @property
        def failed(self) -> bool: ...

    async def _io(
        self, op: str, path: Path, executor: ThreadPoolExecutor, fn: Any, *args: Any
    ) -> Any:
        """Run `fn(*args)` on `executor`; a storage error comes back as a StorageFailure."""
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except Exception as exc:
            raise wrap(exc, op, path) from exc

    def _save(
        self,
        hs: HardState | None,
        entries: tuple[Entry, ...],
        meta: SnapshotMeta | None,
        acks: tuple[AnyMessage, ...],
    ) -> float:
        """On the writer thread: save (durable on return), then release `acks` to the loop."""
        took = timed(self.durable.save, hs, entries, meta)
        if acks:
            rest: tuple[AnyMessage, ...] = acks
            if not (self._stopping or self.failed or self.halted is not None):
                rest = tuple(self.transport.send_from_thread(acks))
            self._loop.call_soon_threadsafe(self._send_acks, acks, rest)
        return took

    def _send_acks(self, acks: tuple[AnyMessage, ...], rest: tuple[AnyMessage, ...]) -> None:
        """Loop thread: count the acks, and send those the writer thread could not."""
        sent = len(acks) - len(rest)
        if sent:
            self.metrics.sent(acks if not rest else tuple(m for m in acks if m not in rest))
        if not rest or self._stopping or self.failed or self.halted is not None:
            return  # nothing is acknowledged after a failure (the save itself was durable)
        self.metrics.sent(rest)
        self.transport.send(rest, now=True)
