"""The simulator's clock and event queue.

Rules:
- Time is an integer count of abstract units (`TICK` units make one Raft tick); nothing here
  reads a real clock.
- Events are ordered by (time, sequence number): the sequence number is the push order, so ties
  are broken by the order in which the (deterministic) simulation scheduled them — never by
  object identity or hashing.
- An event names its target node and the node's incarnation (`epoch`); the cluster drops events
  addressed to an incarnation that has since crashed, so a restart never sees its past.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from raftkv.raft.messages import AnyMessage
from raftkv.raft.types import NodeId

TICK = 1000  # time units per Raft tick


@dataclass(frozen=True, slots=True)
class Deliver:
    """A peer message arriving at `msg.to`; `src_epoch` is the sender's incarnation."""

    msg: AnyMessage
    src_epoch: int


@dataclass(frozen=True, slots=True)
class Tick:
    """One tick of a node's clock; `chain` identifies the tick sequence (pause/restart)."""

    node: NodeId
    chain: int


@dataclass(frozen=True, slots=True)
class PersistDone:
    """The write (and fsync, when asked) of the node's pending Ready has completed."""

    node: NodeId
    epoch: int


@dataclass(frozen=True, slots=True)
class Report:
    """What the transport tells a sender: `unreachable`, `snapshot_ok` or `snapshot_failed`."""

    node: NodeId
    epoch: int
    target: NodeId
    what: str


@dataclass(frozen=True, slots=True)
class Restart:
    node: NodeId


@dataclass(frozen=True, slots=True)
class ClientInvoke:
    client: int


@dataclass(frozen=True, slots=True)
class ClientArrive:
    """A client's request reaching the server it chose."""

    client: int
    op_id: int
    node: NodeId


@dataclass(frozen=True, slots=True)
class ClientTimeout:
    client: int
    op_id: int


@dataclass(frozen=True, slots=True)
class Nemesis:
    """Time for the fault injector to act: a random fault, or `action` aimed at `target`."""

    target: NodeId | None = None
    epoch: int = 0
    action: str = ""


@dataclass(frozen=True, slots=True)
class Resume:
    node: NodeId
    epoch: int


@dataclass(frozen=True, slots=True)
class Heal:
    """End of a timed partition."""

    partition_id: int


Event = (
    Deliver
    | Tick
    | PersistDone
    | Report
    | Restart
    | ClientInvoke
    | ClientArrive
    | ClientTimeout
    | Nemesis
    | Resume
    | Heal
)


@dataclass(order=True, slots=True)
class _Item:
    time: int
    seq: int
    event: Event = field(compare=False)


class Scheduler:
    """A min-heap of future events; `now` only moves forward."""

    def __init__(self) -> None:
        self.now = 0  # time of the event being processed; never decreases
        self._seq = 0  # push counter: the deterministic tie-breaker
        self._heap: list[_Item] = []

    def push(self, delay: int, event: Event) -> None:
        if delay < 0:
            raise ValueError("events cannot be scheduled in the past")
        self._seq += 1
        heapq.heappush(self._heap, _Item(self.now + delay, self._seq, event))

    def pop(self) -> Event | None:
        if not self._heap:
            return None
        item = heapq.heappop(self._heap)
        self.now = item.time
        return item.event

    def peek_time(self) -> int | None:
        return self._heap[0].time if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
