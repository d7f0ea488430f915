"""Configuration of one Raft core. Times are in ticks; the driver decides what a tick is.

Defaults match the seed: a 25 ms tick, a heartbeat every tick, an election timeout of 100 ms
= 4 ticks, randomized in [4, 8) ticks.
"""

from __future__ import annotations

from dataclasses import dataclass

from raftkv.raft.types import NodeId


@dataclass(frozen=True, slots=True)
class RaftConfig:
    id: NodeId
    election_ticks: int = 4  # randomized timeout drawn from [election_ticks, 2*election_ticks)
    heartbeat_ticks: int = 1  # heartbeat_ticks < election_ticks
    pre_vote: bool = True  # thesis §9.6
    check_quorum: bool = True  # thesis §6.2: leader steps down without a quorum's contact
    max_append_bytes: int = 1 << 20  # byte cap per AppendEntries
    max_inflight: int = 256  # pipelined appends per follower in the replicate state
    max_uncommitted_entries: int = 0  # 0 = unlimited (back-pressure hook)
    snapshot_timeout_ticks: int = 400  # give up on an unanswered snapshot transfer (10 s)
    # Leader lease length in ticks (thesis §6.4.1, raft/lease.py); 0 = no lease reads and no
    # lease promise. Must be set alike on every node (the promise is what makes it safe).
    lease_ticks: int = 0

    def __post_init__(self) -> None:
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if self.lease_ticks < 0 or self.lease_ticks >= self.election_ticks:
            raise ValueError("need 0 <= lease_ticks < election_ticks")
        if self.max_inflight < 1 or self.max_append_bytes < 1:
            raise ValueError("max_inflight and max_append_bytes must be positive")
