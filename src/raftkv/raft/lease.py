"""The leader lease (thesis §6.4.1): reads served from local state without a heartbeat round.

Rules:
- Time is the core's lease clock: ticks, plus the periods the driver reports it could not tick
  (`clock_skipped`: a stalled loop, a SIGSTOP). Elections may run slow under load; a lease must
  not, so the lease clock counts every elapsed tick period. No wall clock is read here.
- A heartbeat round carries `round` = the leader's clock + 1 when sent. A follower echoes it
  only if it keeps the promise below; the leader keeps, per voter, the latest round echoed in
  its current term. The lease starts at the round a quorum of voters (the leader counting
  itself now) has echoed: the quorum-th newest — the time the round was SENT, never received.
- The promise (thesis §4.2.3, made unconditional across term changes and restarts): a voter
  that echoed a round refuses to vote for, or become, any other candidate until it has ticked
  `election_ticks` times since it last heard from a leader; a restarted voter waits the same,
  since it may have echoed a round just before it crashed. Only a leadership transfer
  (TimeoutNow, thesis §3.10) bypasses it, so a leader that sent TimeoutNow gives up its lease
  for the rest of its term (the TimeoutNow may arrive long after the transfer timed out).
- The lease holds while `now - start < lease_ticks`; `safe_lease_ticks` derives that bound from
  the election timeout, a clock-drift ratio and the tick granularity of both sides. It is
  cleared whenever the voters change (a lease is earned under one configuration) and never
  survives a role or term change.
"""

from __future__ import annotations

import math

from raftkv.raft import quorum
from raftkv.raft.types import NodeId


def safe_lease_ticks(election_ticks: int, drift_ratio: float, *, follower_slack: int = 1) -> int:
    """The longest lease, in the leader's ticks, that a quorum's promise still covers.

    A follower's promise lasts `election_ticks` of its ticks after it heard the round; its first
    tick may come at once, so it covers at least `election_ticks - follower_slack` of its tick
    periods (slack 1 when ticks and messages reach the core in time order, as in the simulator
    and the asyncio driver; 2 for a driver that may deliver a late tick after a message). The leader
    counts from the tick period in which it sent the round to the one it reads in: elapsed time
    < (now - start + 1) periods. With tick periods within a factor (1 ± drift) of nominal:
    (lease - 1 + 1) * (1 + drift) <= (election_ticks - follower_slack) * (1 - drift).
    0 means no lease at all (every lease read falls back to ReadIndex).
    """
    if not 0.0 <= drift_ratio < 1.0:
        raise ValueError("drift_ratio must be in [0, 1)")
    covered = (election_ticks - follower_slack) * (1.0 - drift_ratio) / (1.0 + drift_ratio)
    return max(0, math.floor(covered + 1e-9))


class LeaseTracker:
    """The leader's view of which heartbeat rounds a quorum echoed (leader only)."""

    __slots__ = ("echoed", "lease_ticks", "voided")

    def __init__(self, lease_ticks: int) -> None:
        self.lease_ticks = lease_ticks  # 0 = leases off
        self.echoed: dict[NodeId, int] = {}  # voter -> newest round it echoed, this term
        self.voided = False  # a TimeoutNow went out this term: no lease until the term ends

    def reset(self) -> None:
        """A new role or term: nothing earned before counts."""
        self.echoed = {}
        self.voided = False

    def forget_rounds(self) -> None:
        """The voters changed: rounds echoed under the old configuration no longer count."""
        self.echoed = {}

    def echo(self, node: NodeId, rnd: int, now: int) -> None:
        """`node` echoed heartbeat round `rnd` (0: it made no promise; later than now: bogus)."""
        if 0 < rnd <= now + 1 and rnd > self.echoed.get(node, 0):
            self.echoed[node] = rnd

    def start(self, voters: tuple[NodeId, ...], me: NodeId, now: int) -> int | None:
        """The clock at which the newest round echoed by a quorum was sent, if any."""
        if not voters:
            return None
        rounds = sorted(
            ((now + 1) if v == me else self.echoed.get(v, 0) for v in voters), reverse=True
        )
        rnd = rounds[quorum.quorum_size(voters) - 1]
        return rnd - 1 if rnd > 0 else None

    def holds(self, voters: tuple[NodeId, ...], me: NodeId, now: int) -> bool:
        if self.lease_ticks <= 0 or self.voided:
            return False
        start = self.start(voters, me, now)
        return start is not None and now - start < self.lease_ticks
