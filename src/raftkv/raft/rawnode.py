"""`RawNode`: the public, synchronous API of the Raft core (etcd-io/raft's RawNode shape).

API (all synchronous, deterministic; time is `tick()`, randomness is the injected rng):
    RawNode(config, storage, rng)
    tick()                              one tick of logical time
    clock_skipped(periods)              tick periods that passed without a tick() (a stall)
    step(msg)                           a message from a peer (stale/misrouted ones are ignored)
    propose(data) -> (term, index)      leader only; raises NotLeader / ProposalDropped
    propose_conf_change(cc) -> (term, index)
    read_index(ctx)                     result arrives as a ReadState in a later Ready
    lease_read_index() -> Index | None  the read index now if the leader holds its lease
    campaign()                          start an election now
    transfer_leader(to)                 thesis §3.10
    report_unreachable(id), report_snapshot(id, ok)
    has_ready() / ready() / advance(ready)
    status() -> Status
Rules: never call `ready()` again before `advance()` of the previous Ready; execute a Ready's
actions in the order of `Ready.steps()`. Conf-change entries take effect in `advance()`.
"""

from __future__ import annotations

import msgspec

from raftkv.raft.config import RaftConfig
from raftkv.raft.errors import InvariantViolation
from raftkv.raft.messages import AnyMessage
from raftkv.raft.raft import Raft, Rng
from raftkv.raft.ready import Ready
from raftkv.raft.storage import LogView
from raftkv.raft.types import (
    ConfChange,
    ConfState,
    EntryKind,
    HardState,
    Index,
    NodeId,
    Role,
    SoftState,
    Term,
)

_conf_decoder = msgspec.msgpack.Decoder(ConfChange)
_conf_encoder = msgspec.msgpack.Encoder()


class ProgressStatus(msgspec.Struct, frozen=True, gc=False):
    match: Index
    next: Index
    state: str
    recent_active: bool
    is_learner: bool


class Status(msgspec.Struct, frozen=True, gc=False):
    id: NodeId
    role: Role
    term: Term
    vote: NodeId | None
    leader: NodeId | None
    commit: Index
    applied: Index
    last_index: Index
    persisted_index: Index
    first_index: Index
    conf: ConfState
    lead_transferee: NodeId | None
    progress: dict[NodeId, ProgressStatus]


class RawNode:
    def __init__(self, config: RaftConfig, storage: LogView, rng: Rng) -> None:
        self.raft = Raft(config, storage, rng)
        self._prev_soft = SoftState(self.raft.leader, self.raft.role)
        self._prev_hard = HardState(self.raft.term, self.raft.vote, self.raft.log.committed)
        self._in_flight: Ready | None = None  # the Ready handed out and not yet advanced
        # Max bytes of committed entries per Ready: bounds one apply pass.
        self._max_apply_bytes = max(config.max_append_bytes * 4, 1 << 20)

    # -- inputs -------------------------------------------------------------------------------
    def tick(self) -> None:
        self.raft.tick()

    def tick_held(self) -> None:
        """A tick that may not start an election (fresh cluster, bootstrap node starting)."""
        self.raft.tick_held()

    def clock_skipped(self, periods: int) -> None:
        """The driver could not tick for `periods` tick periods (its loop stalled, the process
        was paused): the lease clock counts them, the election timer does not (lease.py)."""
        self.raft.clock_skipped(periods)

    def step(self, msg: AnyMessage) -> None:
        self.raft.step(msg)

    def propose(self, data: bytes) -> tuple[Term, Index]:
        return self.raft.propose(EntryKind.NORMAL, data)

    def propose_conf_change(self, cc: ConfChange) -> tuple[Term, Index]:
        return self.raft.propose(EntryKind.CONF_CHANGE, _conf_encoder.encode(cc))

    def read_index(self, ctx: bytes) -> None:
        self.raft.read_index(ctx)

    def lease_read_index(self) -> Index | None:
        """Thesis §6.4.1: the commit index, to serve a read at once once applied, if this leader
        holds its lease now; None otherwise (then use `read_index`: a ReadIndex round)."""
        return self.raft.lease_read_index()

    def campaign(self) -> None:
        self.raft.hup(transfer=False)

    def transfer_leader(self, to: NodeId) -> None:
        self.raft.transfer_leader(to)

    def report_unreachable(self, node: NodeId) -> None:
        self.raft.report_unreachable(node)

    def report_snapshot(self, node: NodeId, ok: bool) -> None:
        self.raft.report_snapshot(node, ok)

    # -- output -------------------------------------------------------------------------------
    def take_messages(self) -> list[AnyMessage]:
        """Messages that need no durability (heartbeats, appends to followers, read answers),
        ready to send now — even while a Ready is being persisted (thesis §10.2.1; etcd's
        asynchronous storage writes do the same). Durable-dependent messages stay queued for
        the next Ready's `persisted_messages`."""
        r = self.raft
        r.flush()
        msgs, r.msgs = r.msgs, []
        return msgs

    def _hard_state(self) -> HardState:
        r = self.raft
        return HardState(r.term, r.vote, r.log.committed)

    def has_ready(self) -> bool:
        if self._in_flight is not None:
            return False
        r = self.raft
        r.flush()
        return bool(
            r.msgs
            or r.persisted_msgs
            or r.read_states
            or r.log.unstable_entries
            or r.log.unstable_snapshot is not None
            or r.log.committed > r.log.applied
            or self._hard_state() != self._prev_hard
            or SoftState(r.leader, r.role) != self._prev_soft
        )

    def ready(self) -> Ready:
        if self._in_flight is not None:
            raise InvariantViolation("ready() called before advance() of the previous Ready")
        r = self.raft
        r.flush()
        soft = SoftState(r.leader, r.role)
        hard = self._hard_state()
        entries = tuple(r.log.unstable_entries)
        snapshot = r.log.unstable_snapshot
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            entries=entries,
            snapshot=snapshot,
            messages=tuple(r.msgs),
            persisted_messages=tuple(r.persisted_msgs),
            committed_entries=tuple(r.log.next_committed(self._max_apply_bytes)),
            read_states=tuple(r.read_states),
            # A commit-only change need not be synced: it can be recomputed from a quorum.
            must_sync=bool(entries)
            or snapshot is not None
            or hard.term != self._prev_hard.term
            or hard.vote != self._prev_hard.vote,
        )
        r.msgs = []
        r.persisted_msgs = []
        r.read_states = []
        self._in_flight = rd
        return rd

    def advance(self, rd: Ready) -> None:
        if rd is not self._in_flight:
            raise InvariantViolation("advance() of a Ready that is not the one in flight")
        self._in_flight = None
        r = self.raft
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
            r.hard_state_persisted(rd.hard_state.term)
        if rd.snapshot is not None:
            r.log.stable_snap_to(rd.snapshot.meta.index)
            if r.log.applied < rd.snapshot.meta.index:
                r.log.applied = rd.snapshot.meta.index
        if rd.entries:
            last = rd.entries[-1]
            r.log.stable_to(last.index, last.term)
            r.self_persisted()
        for entry in rd.committed_entries:
            if entry.kind is EntryKind.CONF_CHANGE:
                r.apply_conf_change(_conf_decoder.decode(entry.data))
        if rd.committed_entries:
            r.log.applied_to(rd.committed_entries[-1].index)

    # -- observation --------------------------------------------------------------------------
    @property
    def leader(self) -> NodeId | None:
        """The known leader of the current term (cheap; `status()` builds a full record)."""
        return self.raft.leader

    @property
    def conf(self) -> ConfState:
        """The configuration in force, pending changes included (cheap, like `leader`)."""
        return self.raft.conf

    def status(self) -> Status:
        r = self.raft
        progress = {
            node: ProgressStatus(pr.match, pr.next, pr.state.value, pr.recent_active, pr.is_learner)
            for node, pr in sorted(r.progress.items())
        }
        return Status(
            id=r.id,
            role=r.role,
            term=r.term,
            vote=r.vote,
            leader=r.leader,
            commit=r.log.committed,
            applied=r.log.applied,
            last_index=r.log.last_index(),
            persisted_index=r.log.persisted_index,
            first_index=r.log.first_index(),
            conf=r.conf,
            lead_transferee=r.lead_transferee,
            progress=progress,
        )
