"""Halting on a committed entry this node cannot apply: stay up, say so, apply nothing more.

An entry that is committed is in every member's log; if this node cannot decode it (a command
kind from a newer version, a malformed payload), skipping it would fork the state machines and
stopping the process only starts a crash loop (the entry is still there at the next start). So
the node *halts* (ARCHITECTURE §7), the way a CockroachDB replica marks itself corrupt:

Rules:
- Nothing at or past the entry is ever applied: the entries of the batch before it are applied
  (driver `_apply`), the state machine stays at index - 1, the log is kept as it is.
- Nothing is acknowledged that was not applied here: every waiting write fails with
  `NodeHalted` (its outcome is unknown: the entry may be committed and applied by others),
  every read and every new request is refused with `NodeHalted` (HTTP 503 `node_halted`);
  stale reads too (the state would never move again).
- The node steps out of Raft: ticks stop, the core becomes a follower that knows no leader (so
  nothing here proposes or campaigns), and the peer transport closes. To the others it is a
  member that is down: a majority of healthy members keeps the cluster available exactly as
  when one node crashes, and a halted leader is replaced after one election timeout. It does
  not keep voting or persisting: that would need a core that replicates what it never applies,
  grows its log without bound (no snapshot past the entry) and could be elected while unable
  to answer a single client; a down member is the state every tool and guard already handles
  (`would_lose_quorum` counts it as unhealthy, so removing it is allowed).
- The process stays up: `/health` 200 (`"status": "halted"`: restarting would not help, so a
  liveness probe must not restart it), `/ready` 503 `node_halted`, `/cluster/local` and
  `/cluster/status` show role `Halted` and the `HaltReport` (index, tag, error, action). It is
  logged once, at critical level. SIGTERM stops it (exit 0, a line on stderr); the removal
  watch (membership.py) still ends it when the operator removes the member.
- A restart halts again at the same entry (files unchanged), unless the binary was upgraded
  to one that decodes it: then it applies on from there and rejoins.
- `check_readable` is the one test every read passes, stale ones included (runtime/node.py):
  halted -> NodeHalted; failed (storage failure, broken invariant, removed) or stopped ->
  NodeStopping (503 `node_stopping`). `when_reads_refused` callbacks run synchronously at the
  first of those transitions (the read workers are told before any reply of the failure).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from raftkv.runtime.api import HaltReport, NodeHalted, NodeStopping
from raftkv.storage.errors import UndecodableEntryError

if TYPE_CHECKING:
    from raftkv.raft.rawnode import RawNode
    from raftkv.raft.types import NodeId
    from raftkv.runtime.waiters import AppliedWaiters, ProposalWaiters, ReadWaiters
    from raftkv.transport.tcp import PeerTransport

log = structlog.get_logger("raftkv.runtime")


def halt_action(node_id: str, index: int, tag: int | None) -> str:
    """What an operator can do, in words (served with the report)."""
    replace = (
        f"or replace this member: `raftkv member remove {node_id}` against a healthy node "
        "(this process then exits), and join a new node with a new id on an empty disk"
    )
    if tag is not None:
        return (
            f"entry {index} holds command kind tag {tag}, unknown to this version: it was "
            "probably proposed by a newer raftkv. Upgrade this node's binary and restart it "
            f"(it then applies from entry {index} on), {replace}"
        )
    return (
        f"entry {index} is malformed for this version. If other members applied past it "
        f"(applied_index in /cluster/status), upgrade this node to their version and restart "
        f"it, {replace}. If every member halted at {index}, the log itself is bad: restore "
        "the cluster from a backup (raftkv snapshot restore)"
    )


def halt_report(node_id: str, exc: UndecodableEntryError, term: int) -> HaltReport:
    return HaltReport(
        index=exc.index,
        term=term,
        tag=exc.tag,
        error=str(exc),
        action=halt_action(node_id, exc.index, exc.tag),
        since=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


class HaltSteps:
    """A mixin of `RaftDriver` (driver.py); it only uses the driver members declared below."""

    if TYPE_CHECKING:
        id: NodeId
        raw: RawNode
        transport: PeerTransport
        draining: bool
        _stopping: bool
        _tasks: list[asyncio.Task[object]]
        _proposals: ProposalWaiters
        _reads: ReadWaiters
        _applied_waiters: AppliedWaiters

        @property
        def failed(self) -> bool: ...

    halted: HaltReport | None = None  # set once, by _halt; never cleared in this process
    _step_out: asyncio.Task[None] | None = None  # closing the transport after a halt
    _reads_refused_calls: tuple[Callable[[], None], ...] = ()  # when_reads_refused's
    _reads_refused_told = False  # they ran (once: a refusing node never serves again)

    def check_serving(self) -> None:
        """Raise NodeHalted or NodeStopping if this node may not take a request now."""
        if self.halted is not None:
            raise NodeHalted(self.halted)
        # After a storage failure too: the node is on its way out and acknowledges nothing
        # more, even while parts of it (a leader's Ready loop when a snapshot build failed)
        # still run until the stop (a request let in then waited out the server's shutdown).
        if self._stopping or self.draining or self.failed:
            raise NodeStopping("node is shutting down")

    def refuses_reads(self) -> bool:
        """True once no read at all may be served here, stale ones included (`check_readable`)."""
        return self.halted is not None or self.failed or self._stopping

    def check_readable(self) -> None:
        """Raise NodeHalted or NodeStopping if this node may not serve even a stale read now:
        halted; failed (a storage failure, a broken invariant, removed: its applied state may
        be ahead of or behind what is durable, and the process is going down); or stopped
        (its state is closing). A graceful drain (`draining`) still serves stale reads: its
        state is sound until the listener closes (README, Deployment)."""
        if self.halted is not None:
            raise NodeHalted(self.halted)
        if self.refuses_reads():
            raise NodeStopping("node is shutting down")

    def when_reads_refused(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the loop thread, synchronously, once, when the node stops serving
        reads (`refuses_reads` then holds): before any reply waiting on the failure is sent,
        so the HTTP read workers hear of it first (server/read_workers.py)."""
        self._reads_refused_calls = (*self._reads_refused_calls, callback)

    def _reads_refused(self) -> None:
        if self._reads_refused_told:
            return
        self._reads_refused_told = True
        for callback in self._reads_refused_calls:
            try:
                callback()
            except Exception:  # a listener's bug must not cut the failure path short
                log.exception("reads-refused callback failed", node=self.id)

    def _halt(self, exc: UndecodableEntryError) -> None:
        """Called from the Ready loop (which ends) once the entries before `exc.index` are
        applied; see the module rules."""
        if self.halted is not None:
            return
        raft = self.raw.raft
        report = halt_report(str(self.id), exc, int(raft.term))
        self.halted = report
        log.critical(
            "node halted: a committed entry cannot be applied; serving status only",
            node=self.id,
            index=report.index,
            tag=report.tag,
            error=report.error,
            action=report.action,
        )
        failure = NodeHalted(report)
        # Nothing may be acknowledged from now on: waiters fail before any other task runs.
        self._proposals.fail_all(failure)
        self._reads.fail_all(failure)
        self._applied_waiters.fail_all(failure)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()  # the tick loop; a snapshot build at index - 1 is also cut short
        # Frozen as a follower without a leader: nothing proposes, campaigns or transfers.
        raft.become_follower(raft.term, None)
        self._step_out = asyncio.create_task(self.transport.stop(), name=f"halt-{self.id}")
        self._reads_refused()
