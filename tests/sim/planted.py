"""Test-only Raft cores, each with one classic bug planted, for the simulator to catch.

Nothing here is reachable from production code: each bug is a subclass of the real core (or of
its log) overriding exactly one rule; `factory(name)` builds the RawNode factory for a run.
"""

from __future__ import annotations

import random

import msgspec

from raftkv.raft.config import RaftConfig
from raftkv.raft.log import RaftLog
from raftkv.raft.raft import Raft
from raftkv.raft.rawnode import RawNode
from raftkv.raft.readindex import PendingRead
from raftkv.raft.ready import Ready
from raftkv.raft.storage import MemoryStorage
from raftkv.raft.types import ConfChange, Entry, Index, Term
from raftkv.sim.node import NodeFactory


class Figure8Raft(Raft):
    """(a) Commits by counting replicas whatever the entry's term (drops the §5.4.2 rule)."""

    def maybe_commit(self) -> bool:
        match = {node: pr.match for node, pr in self.progress.items()}
        voters = self.conf.voters
        indexes = sorted((match.get(v, Index(0)) for v in voters), reverse=True)
        index = indexes[len(voters) // 2] if voters else Index(0)
        if index > self.log.committed:
            self.log.commit_to(index)
            self._release_reads_before_commit()
            return True
        return False


class BlindVoteLog(RaftLog):
    """(b) Every candidate's log counts as up to date (drops the §5.4.1 check)."""

    def is_up_to_date(self, last_index: Index, last_term: Term) -> bool:
        return True


class BlindVoteRaft(Raft):
    def __init__(self, config: RaftConfig, storage: MemoryStorage, rng: random.Random) -> None:
        super().__init__(config, storage, rng)
        self.log.__class__ = BlindVoteLog


class EagerReadRaft(Raft):
    """(d) A leader answers a read at once, without the heartbeat round confirming it leads."""

    def _start_read(self, read: PendingRead) -> None:
        read.index = self.log.committed
        self._answer_read(read)


class NoTruncateLog(RaftLog):
    """(e) A follower keeps a conflicting suffix and only appends entries past its last index."""

    def maybe_append(
        self, prev_index: Index, prev_term: Term, commit: Index, entries: tuple[Entry, ...]
    ) -> Index | None:
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = Index(prev_index + len(entries))
        fresh = [e for e in entries if e.index > self.last_index()]
        if fresh:
            self.append(fresh)
        self.commit_to(Index(min(commit, last_new, self.last_index())))
        return last_new


class NoTruncateRaft(Raft):
    def __init__(self, config: RaftConfig, storage: MemoryStorage, rng: random.Random) -> None:
        super().__init__(config, storage, rng)
        self.log.__class__ = NoTruncateLog


class NoOneAtATimeRaft(Raft):
    """(f) Accepts a membership change while another is still pending (drops thesis §4.1's
    one-at-a-time rule): two changes in flight can leave disjoint majorities."""

    def _check_conf_change(self, cc: ConfChange) -> None:
        pending, self.pending_conf_index = self.pending_conf_index, Index(0)
        try:
            super()._check_conf_change(cc)
        finally:
            self.pending_conf_index = pending


class NoCommitInTermRaft(Raft):
    """(g) A new leader accepts a membership change before it has committed an entry of its
    term (drops the raft-dev 2015 fix): a change left uncommitted in its log by an earlier
    leader is then still in flight beside the new one. Both halves of the guard go: the
    explicit check and the pending index a new leader starts from (etcd's form of it)."""

    def become_leader(self) -> None:
        super().become_leader()
        self.pending_conf_index = Index(0)

    def _committed_in_term(self) -> bool:
        if self._in_conf_check:
            return True
        return super()._committed_in_term()

    _in_conf_check = False

    def _check_conf_change(self, cc: ConfChange) -> None:
        self._in_conf_check = True
        try:
            super()._check_conf_change(cc)
        finally:
            self._in_conf_check = False


class NoPromiseRaft(Raft):
    """(h) Followers echo lease rounds but vote as if they had promised nothing (drops the
    thesis §4.2.3 rule that makes §6.4.1's lease safe)."""

    def _lease_promised(self) -> bool:
        return False

    def _in_lease(self) -> bool:
        return False


class LongLeaseRaft(Raft):
    """(i) A lease of twice the election timeout: it outlives the followers' promise (thesis
    §6.4.1 bounds it by the election timeout, less a clock-drift margin). A lease merely as
    long as the election timeout, with no drift margin, was NOT caught in 300 seeds."""

    def __init__(self, config: RaftConfig, storage: MemoryStorage, rng: random.Random) -> None:
        super().__init__(config, storage, rng)
        self.lease.lease_ticks = 2 * config.election_ticks


class PausedClockRaft(Raft):
    """(j) The lease clock ignores the periods a paused process could not tick (SIGSTOP)."""

    def clock_skipped(self, periods: int) -> None:
        pass


class _PlantedNode(RawNode):
    raft_class: type[Raft] = Raft

    def __init__(self, config: RaftConfig, storage: MemoryStorage, rng: random.Random) -> None:
        super().__init__(config, storage, rng)
        self.raft = self.raft_class(config, storage, rng)


class Figure8Node(_PlantedNode):
    raft_class = Figure8Raft


class BlindVoteNode(_PlantedNode):
    raft_class = BlindVoteRaft


class EagerReadNode(_PlantedNode):
    raft_class = EagerReadRaft


class NoTruncateNode(_PlantedNode):
    raft_class = NoTruncateRaft


class EarlyAckNode(RawNode):
    """(c) Acks and vote grants leave with the first messages, before the write is durable."""

    def ready(self) -> Ready:
        rd = super().ready()
        early = msgspec.structs.replace(
            rd, messages=rd.messages + rd.persisted_messages, persisted_messages=()
        )
        self._in_flight = early
        return early


class NoOneAtATimeNode(_PlantedNode):
    raft_class = NoOneAtATimeRaft


class NoCommitInTermNode(_PlantedNode):
    raft_class = NoCommitInTermRaft


class NoPromiseNode(_PlantedNode):
    raft_class = NoPromiseRaft


class LongLeaseNode(_PlantedNode):
    raft_class = LongLeaseRaft


class PausedClockNode(_PlantedNode):
    raft_class = PausedClockRaft


# Lease rules: caught with leader leases on every seed (SimOptions(leases=True)).
LEASE_BUGS: dict[str, NodeFactory] = {
    "lease_without_promise": NoPromiseNode,
    "lease_without_drift_margin": LongLeaseNode,
    "lease_clock_stops_when_paused": PausedClockNode,
}

# Membership guards: caught under the membership-heavy faults (SimOptions(membership=True)).
GUARD_BUGS: dict[str, NodeFactory] = {
    "conf_change_not_one_at_a_time": NoOneAtATimeNode,
    "conf_change_before_commit_in_term": NoCommitInTermNode,
}

BUGS: dict[str, NodeFactory] = {
    "figure8_commit": Figure8Node,
    "vote_without_log_check": BlindVoteNode,
    "ack_before_persist": EarlyAckNode,
    "read_without_heartbeat": EagerReadNode,
    "no_suffix_truncation": NoTruncateNode,
}
