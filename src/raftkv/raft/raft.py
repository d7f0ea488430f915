"""The Raft protocol state machine: replication, commit, membership, transfer; elections in
`election.py`, ReadIndex and leases in `readindex.py` (mixins of `Raft`).

Rules:
- Pure and deterministic: time is `tick()`, randomness the injected rng, I/O the driver's job.
- Outgoing messages are queued here; `RawNode.ready()` hands them out. Messages that promise
  durable state (vote grants, own vote requests, append acks) go to `persisted_msgs` and leave
  only after the Ready's persist step.
- Sends to followers are deferred to `flush()` (called by `ready()`): every proposal and ack of one
  loop turn becomes ONE AppendEntries per follower (batching is the performance model).
- Membership: single-server changes (thesis §4.1), one at a time, that take effect when the
  entry is *applied* (on `advance`), as in etcd; a leader accepts a change only once it has
  committed an entry of its term (the fix to the single-server bug, raft-dev 2015) and no
  earlier change is pending. Learners replicate but never vote nor count toward quorums.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from raftkv.raft import quorum
from raftkv.raft.confchange import conf_after
from raftkv.raft.config import RaftConfig
from raftkv.raft.election import Elections
from raftkv.raft.errors import (
    Compacted,
    ConfChangeRefused,
    InvariantViolation,
    NotLeader,
    ProposalDropped,
)
from raftkv.raft.lease import LeaseTracker
from raftkv.raft.log import RaftLog
from raftkv.raft.messages import (
    AnyMessage,
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from raftkv.raft.progress import Progress, ProgressState
from raftkv.raft.readindex import PendingRead, ReadOnly
from raftkv.raft.storage import LogView
from raftkv.raft.types import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    Index,
    NodeId,
    ReadState,
    Role,
    Snapshot,
    Term,
)

_conf_decoder = msgspec.msgpack.Decoder(ConfChange)


class Rng(Protocol):
    def randrange(self, start: int, stop: int, /) -> int: ...


class Raft(ReadOnly, Elections):
    def __init__(self, config: RaftConfig, storage: LogView, rng: Rng) -> None:
        self.id = config.id
        self.cfg = config
        self.rng = rng
        self.log = RaftLog(storage)
        hard_state, conf = storage.initial_state()
        self.term: Term = hard_state.term  # latest term seen; never decreases
        self.vote: NodeId | None = hard_state.vote  # whom we voted for in `term`
        if hard_state.commit:
            self.log.commit_to(hard_state.commit)
        self.conf: ConfState = conf  # the applied configuration
        self.role = Role.FOLLOWER
        self.leader: NodeId | None = None
        self.election_elapsed = 0  # ticks since last heard from a leader / since last election
        self.heartbeat_elapsed = 0  # leader only
        self.randomized_timeout = 0  # in [election_ticks, 2 * election_ticks)
        self.votes: dict[NodeId, bool] = {}  # (pre-)candidate only
        # Candidate: its vote requests wait for its new term and vote to be durable (they are
        # `persisted_msgs`); its election timer waits with them (`hard_state_persisted`).
        self.votes_unsent = False
        self.progress: dict[NodeId, Progress] = {}  # leader only; one per voter and learner
        self.lead_transferee: NodeId | None = None  # leader only, thesis §3.10
        self.pending_conf_index: Index = Index(0)  # leader: index of the last conf change
        self.msgs: list[AnyMessage] = []
        self.persisted_msgs: list[AnyMessage] = []
        self.read_states: list[ReadState] = []
        self.pending_reads: list[PendingRead] = []  # leader: awaiting a heartbeat quorum
        self.reads_before_commit: list[PendingRead] = []  # leader: awaiting first commit in term
        self.clock = 0  # lease clock: ticks + skipped tick periods; never decreases (lease.py)
        # Ticks since we last heard from a leader (any term). 0 at every start, whatever the
        # persisted term: we may have echoed a lease round just before a crash, and the echo can
        # leave before the term it was sent in is durable (a node restarted with term 0 may
        # have promised in term 1). The cost is at most one election timeout at a cold start,
        # which the first election waits anyway. Only consulted when leases are on (lease.py).
        self.heard_elapsed = 0
        self.lease = LeaseTracker(config.lease_ticks)  # leader only
        self.need_bcast_append = False  # deferred until flush()
        self.need_read_heartbeat = False  # deferred until flush()
        self._reset_randomized_timeout()

    # -- helpers ------------------------------------------------------------------------------
    def is_voter(self, node: NodeId) -> bool:
        return node in self.conf.voters

    def promotable(self) -> bool:
        return self.is_voter(self.id) and self.log.unstable_snapshot is None

    def _reset_randomized_timeout(self) -> None:
        n = self.cfg.election_ticks
        self.randomized_timeout = self.rng.randrange(n, 2 * n)

    def _send(self, msg: AnyMessage) -> None:
        match msg:
            case RequestVote(pre_vote=False) | RequestVoteResponse(pre_vote=False):
                self.persisted_msgs.append(msg)  # §5.2: vote and term durable first
            case AppendEntriesResponse():
                self.persisted_msgs.append(msg)  # ack only what is durable
            case _:
                self.msgs.append(msg)

    # -- role changes -------------------------------------------------------------------------
    def _reset(self, term: Term) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.leader = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self.votes = {}
        self.votes_unsent = False
        self.lead_transferee = None
        self.pending_reads = []
        self.reads_before_commit = []
        self.lease.reset()
        self.need_bcast_append = False
        self.need_read_heartbeat = False

    def become_follower(self, term: Term, leader: NodeId | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader
        self.progress = {}

    def become_pre_candidate(self) -> None:
        # Thesis §9.6: no term change, so a lost PreVote disturbs nobody.
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.leader = None
        self.progress = {}

    def become_candidate(self) -> None:
        self._reset(Term(self.term + 1))
        self.role = Role.CANDIDATE
        self.vote = self.id
        self.progress = {}

    def become_leader(self) -> None:
        if self.role is Role.FOLLOWER:
            raise InvariantViolation("follower cannot become leader directly")
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        last = self.log.last_index()
        self.progress = {}
        for node in self.conf.all_nodes():
            self._add_progress(node, Index(last + 1))
        # Any conf change in the uncommitted tail may still be pending (§4.1: one at a time).
        self.pending_conf_index = last
        # §5.4.2 / §8: a no-op in the new term lets us commit (and serve reads) promptly.
        self.log.append([Entry(self.term, Index(last + 1), EntryKind.NORMAL, b"")])
        self.self_persisted()
        self.need_bcast_append = True

    def _add_progress(self, node: NodeId, next_index: Index) -> None:
        pr = Progress(next_index, self.cfg.max_inflight, is_learner=node in self.conf.learners)
        if node == self.id:
            pr.match = self.log.persisted_index
            pr.become_replicate()
        self.progress[node] = pr

    # -- time ---------------------------------------------------------------------------------
    def tick(self) -> None:
        self.clock += 1
        self.heard_elapsed += 1
        if self.role is Role.LEADER:
            self._tick_leader()
        elif not self.votes_unsent:  # §5.2: an election's timer runs once its requests left
            self.election_elapsed += 1
            if self.election_elapsed >= self.randomized_timeout and self.promotable():
                self.election_elapsed = 0
                self.hup(transfer=False)

    def tick_held(self) -> None:
        """A tick in which this node may not start an election (the runtime holds elections on
        a fresh cluster while its bootstrap node starts). Time still passes for the lease clock
        and for the promise (§6.4.1): once it ends, the node grants the bootstrap node's
        (pre-)vote. Without this, a held node refused every vote for the whole hold."""
        if self.role is Role.LEADER:
            self.tick()  # a leader is never held; keep its heartbeats going
            return
        self.clock += 1
        self.heard_elapsed += 1

    def clock_skipped(self, periods: int) -> None:
        """`periods` tick periods passed without a `tick()` (a stalled loop, a pause): the lease
        clock counts them; elections do not (they may run slow, a lease must not)."""
        if periods > 0:
            self.clock += periods

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        for node in sorted(self.progress):
            pr = self.progress[node]
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_elapsed += 1
                if pr.snapshot_elapsed >= self.cfg.snapshot_timeout_ticks:
                    self.report_snapshot(node, False)  # the transfer was lost; start over
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                # Thesis §6.2: a leader cut off from a quorum steps down.
                self.become_follower(self.term, None)
                return
            self.lead_transferee = None  # a transfer that took an election timeout failed
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat(self.pending_reads[-1].context if self.pending_reads else b"")

    def _quorum_active(self) -> bool:
        active = {
            node
            for node, pr in self.progress.items()
            if node == self.id or (pr.recent_active and not pr.is_learner)
        }
        for node, pr in self.progress.items():
            if node != self.id:
                pr.recent_active = False
        return sum(1 for v in self.conf.voters if v in active) >= quorum.quorum_size(
            self.conf.voters
        )

    # -- step ---------------------------------------------------------------------------------
    def step(self, msg: AnyMessage) -> None:
        if msg.to != self.id or msg.from_ == self.id:
            return  # misrouted; a peer must never impersonate us
        if msg.term > self.term:
            if not self._step_higher_term(msg):
                return
        elif msg.term < self.term:
            self._step_lower_term(msg)
            return
        match msg:
            case RequestVote():
                self._handle_vote_request(msg)
            case _:
                if self.role is Role.LEADER:
                    self._step_leader(msg)
                elif self.role is Role.FOLLOWER:
                    self._step_follower(msg)
                else:
                    self._step_candidate(msg)

    def _step_higher_term(self, msg: AnyMessage) -> bool:
        """Handle a message from a higher term; False if it must be ignored."""
        match msg:
            case RequestVote(pre_vote=pre, transfer=transfer):
                if not transfer and (self._in_lease() or self._lease_promised()):
                    return False  # §4.2.3: do not let a disruptive server depose a live leader
                if pre:
                    return True  # PreVote never changes our term
                self.become_follower(msg.term, None)
            case RequestVoteResponse(pre_vote=True, granted=True):
                return True  # a grant for the term we would campaign in
            case AppendEntries() | Heartbeat() | InstallSnapshot():
                self.become_follower(msg.term, msg.from_)
            case _:
                self.become_follower(msg.term, None)
        return True

    def _step_lower_term(self, msg: AnyMessage) -> None:
        match msg:
            case AppendEntries() | Heartbeat() if self.cfg.check_quorum or self.cfg.pre_vote:
                # A stale leader (e.g. back from a partition) learns our term and steps down;
                # without this, PreVote could leave it unable to rejoin (etcd's rule).
                self._send(AppendEntriesResponse(self.term, self.id, msg.from_, Index(0)))
            case RequestVote(pre_vote=True):
                self._send(RequestVoteResponse(self.term, self.id, msg.from_, False, pre_vote=True))
            case _:
                pass  # §5.1: stale messages are ignored

    # -- follower -----------------------------------------------------------------------------
    def _step_follower(self, msg: AnyMessage) -> None:
        match msg:
            case AppendEntries():
                self.election_elapsed = self.heard_elapsed = 0
                self.leader = msg.from_
                self._handle_append(msg)
            case Heartbeat():
                self.election_elapsed = self.heard_elapsed = 0
                self.leader = msg.from_
                self.log.commit_to(Index(min(msg.commit, self.log.last_index())))
                # Echoing the round is our lease promise (lease.py): only if we keep it.
                rnd = msg.round if self.cfg.lease_ticks > 0 and self.cfg.check_quorum else 0
                self._send(HeartbeatResponse(self.term, self.id, msg.from_, msg.context, rnd))
            case InstallSnapshot():
                self.election_elapsed = self.heard_elapsed = 0
                self.leader = msg.from_
                self._handle_snapshot(msg)
            case TimeoutNow():
                if self.promotable():
                    self.hup(transfer=True)  # thesis §3.10: skip PreVote and the lease check
            case ReadIndexResponse(index=index, context=ctx, reject=False):
                self.read_states.append(ReadState(index, ctx))
            case _:
                pass

    def _handle_append(self, msg: AppendEntries) -> None:
        if msg.prev_index < self.log.committed:
            # Already committed here; tell the leader where we are.
            self._send(AppendEntriesResponse(self.term, self.id, msg.from_, self.log.committed))
            return
        last_new = self.log.maybe_append(msg.prev_index, msg.prev_term, msg.commit, msg.entries)
        if last_new is not None:
            self._send(AppendEntriesResponse(self.term, self.id, msg.from_, last_new))
            return
        # §5.3 reject, with the fast back-off hint (etcd's findConflictByTerm).
        hint_index = Index(min(msg.prev_index, self.log.last_index()))
        hint_index = self.log.find_conflict_by_term(hint_index, msg.prev_term)
        hint_term = self.log.term(hint_index) or Term(0)
        self._send(
            AppendEntriesResponse(
                self.term,
                self.id,
                msg.from_,
                msg.prev_index,
                reject=True,
                hint_index=hint_index,
                hint_term=hint_term,
            )
        )

    def _handle_snapshot(self, msg: InstallSnapshot) -> None:
        meta = msg.snapshot.meta
        if meta.index <= self.log.committed:
            self._send(AppendEntriesResponse(self.term, self.id, msg.from_, self.log.committed))
            return
        if self.log.match_term(meta.index, meta.term):
            # We hold the snapshot's last entry: fast-forward the commit instead (§7).
            self.log.commit_to(meta.index)
        else:
            self.log.restore(msg.snapshot)
            self.conf = meta.conf
        self._send(AppendEntriesResponse(self.term, self.id, msg.from_, self.log.last_index()))

    # -- leader -------------------------------------------------------------------------------
    def _step_leader(self, msg: AnyMessage) -> None:
        match msg:
            case ReadIndexRequest(context=ctx):
                self._handle_read_request(ctx, msg.from_)
                return
            case _:
                pass
        pr = self.progress.get(msg.from_)
        if pr is None:
            return  # not a member (e.g. just removed)
        pr.recent_active = True
        match msg:
            case AppendEntriesResponse(reject=True):
                self._handle_append_reject(msg, pr)
            case AppendEntriesResponse():
                self._handle_append_success(msg, pr)
            case HeartbeatResponse(context=ctx):
                pr.probe_sent = False
                if pr.state is ProgressState.REPLICATE and len(pr.inflights) >= pr.max_inflight:
                    pr.free_first_inflight()
                if pr.match < self.log.last_index():
                    # Possibly lost appends: an (even empty) append provokes a reject we can
                    # back off from.
                    self.maybe_send_append(msg.from_, pr)
                if msg.round and msg.from_ in self.conf.voters:
                    self.lease.echo(msg.from_, msg.round, self.clock)
                if ctx:
                    self._ack_read(ctx, msg.from_)
            case _:
                pass

    def _handle_append_reject(self, msg: AppendEntriesResponse, pr: Progress) -> None:
        next_probe = msg.hint_index
        if msg.hint_term > 0:
            next_probe = self.log.find_conflict_by_term(msg.hint_index, msg.hint_term)
        if pr.maybe_decr_to(msg.index, next_probe):
            if pr.state is ProgressState.REPLICATE:
                pr.become_probe()
            self.maybe_send_append(msg.from_, pr)

    def _handle_append_success(self, msg: AppendEntriesResponse, pr: Progress) -> None:
        if not pr.maybe_update(msg.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        if self.maybe_commit():
            self.need_bcast_append = True  # propagate the new commit index
        elif pr.match < self.log.last_index():
            self.maybe_send_append(msg.from_, pr, send_empty=False)
        if msg.from_ == self.lead_transferee and pr.match == self.log.last_index():
            self._send_timeout_now(msg.from_)

    def maybe_commit(self) -> bool:
        match = {node: pr.match for node, pr in self.progress.items()}
        index = quorum.committed_index(self.conf.voters, match)
        # §5.4.2 (Figure 8): only entries of the current term are committed by counting replicas.
        if index > self.log.committed and self.log.term(index) == self.term:
            self.log.commit_to(index)
            self._release_reads_before_commit()
            return True
        return False

    def self_persisted(self) -> None:
        """Our own durable index advanced (thesis §10.2.1: the leader counts itself once synced)."""
        pr = self.progress.get(self.id)
        if pr is not None and pr.maybe_update(self.log.persisted_index) and self.maybe_commit():
            self.need_bcast_append = True

    def maybe_send_append(self, to: NodeId, pr: Progress, *, send_empty: bool = True) -> bool:
        if pr.is_paused():
            return False
        prev = Index(pr.next - 1)
        prev_term = self.log.term(prev)
        try:
            if prev_term is None:
                raise Compacted(f"term of {prev} unavailable")
            entries = self.log.slice(
                pr.next, Index(self.log.last_index() + 1), self.cfg.max_append_bytes
            )
        except Compacted:
            return self._send_snapshot(to, pr)
        if not entries and not send_empty:
            return False
        self._send(
            AppendEntries(
                self.term, self.id, to, prev, prev_term, tuple(entries), self.log.committed
            )
        )
        last = entries[-1].index if entries else prev
        pr.sent_entries(last, len(entries))
        return True

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        """Send our snapshot; False if we hold back (then nothing was sent)."""
        if not pr.recent_active:
            return False  # etcd's rule: do not ship a snapshot to a node we have not heard from
        snap: Snapshot = self.log.storage.snapshot()
        pr.become_snapshot(snap.meta.index)
        self._send(InstallSnapshot(self.term, self.id, to, snap))
        return True

    def bcast_append(self) -> None:
        for node in sorted(self.progress):
            if node != self.id:
                pr = self.progress[node]
                # Keep sending while the window allows: a large backlog spans several appends.
                while self.maybe_send_append(node, pr) and pr.state is ProgressState.REPLICATE:
                    if pr.next > self.log.last_index():
                        break

    def _bcast_heartbeat(self, context: bytes) -> None:
        for node in sorted(self.progress):
            if node != self.id:
                pr = self.progress[node]
                commit = Index(min(pr.match, self.log.committed))
                # round: our clock when sent (+1, so 0 means none); a lease starts there.
                self._send(Heartbeat(self.term, self.id, node, commit, context, self.clock + 1))

    def flush(self) -> None:
        """Emit the sends deferred during this loop turn (batching)."""
        if self.role is not Role.LEADER:
            return
        if self.need_bcast_append:
            self.need_bcast_append = False
            self.bcast_append()
        if self.need_read_heartbeat:
            self.need_read_heartbeat = False
            self._bcast_heartbeat(self.pending_reads[-1].context if self.pending_reads else b"")

    # -- proposals ----------------------------------------------------------------------------
    def propose(self, kind: EntryKind, data: bytes) -> tuple[Term, Index]:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.lead_transferee is not None:
            raise ProposalDropped("leadership transfer in progress")
        if kind is EntryKind.CONF_CHANGE:
            self._check_conf_change(_conf_decoder.decode(data))
        index = Index(self.log.last_index() + 1)
        self.log.append([Entry(self.term, index, kind, data)])
        if kind is EntryKind.CONF_CHANGE:
            self.pending_conf_index = index
        self.need_bcast_append = True
        return self.term, index

    def _check_conf_change(self, cc: ConfChange) -> None:
        if self.pending_conf_index > self.log.applied:
            # Thesis §4.1: one single-server change at a time.
            raise ConfChangeRefused("pending", "a configuration change is already in progress")
        if not self._committed_in_term():
            # The single-server bug (raft-dev 2015, thesis §4.1 errata): a new leader must commit
            # an entry of its term before changing the configuration.
            raise ConfChangeRefused("term", "leader has not yet committed an entry in its term")
        match cc.kind:
            case ConfChangeKind.ADD_VOTER if cc.node_id in self.conf.voters:
                raise ConfChangeRefused("invalid", f"{cc.node_id} is already a voter")
            case ConfChangeKind.ADD_LEARNER if cc.node_id in self.conf.all_nodes():
                raise ConfChangeRefused("invalid", f"{cc.node_id} is already a member")
            case ConfChangeKind.REMOVE_NODE if cc.node_id not in self.conf.all_nodes():
                raise ConfChangeRefused("invalid", f"{cc.node_id} is not a member")
            case ConfChangeKind.REMOVE_NODE if self.conf.voters == (cc.node_id,):
                raise ConfChangeRefused("invalid", "cannot remove the last voter")
            case _:
                pass

    def apply_conf_change(self, cc: ConfChange) -> None:
        """Called when a conf-change entry is applied: the new configuration takes effect."""
        self.conf = conf_after(self.conf, cc)
        self.lease.forget_rounds()  # a lease is earned under one configuration's quorums
        if self.role is not Role.LEADER:
            return
        if cc.node_id == self.id and cc.kind is ConfChangeKind.REMOVE_NODE:
            self.become_follower(self.term, None)  # removed leaders step down
            return
        for node in self.conf.all_nodes():
            if node not in self.progress:
                self._add_progress(node, Index(self.log.last_index() + 1))
            else:
                self.progress[node].is_learner = node in self.conf.learners
        for node in sorted(self.progress):
            if node not in self.conf.all_nodes():
                del self.progress[node]
        if self.lead_transferee is not None and not self.is_voter(self.lead_transferee):
            self.lead_transferee = None
        self.maybe_commit()  # the quorum may have shrunk
        self.need_bcast_append = True

    # -- leadership transfer (thesis §3.10) ---------------------------------------------------
    def transfer_leader(self, to: NodeId) -> None:
        if self.role is not Role.LEADER or to == self.id or not self.is_voter(to):
            return
        self.lead_transferee = to
        self.election_elapsed = 0  # the transfer must finish within one election timeout
        pr = self.progress[to]
        if pr.match == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self.maybe_send_append(to, pr)

    def _send_timeout_now(self, to: NodeId) -> None:
        # The target's election bypasses every follower's lease promise (§3.10), and this
        # message may arrive after the transfer timed out: no lease for the rest of the term.
        self.lease.voided = True
        self._send(TimeoutNow(self.term, self.id, to))

    # -- driver feedback ----------------------------------------------------------------------
    def report_unreachable(self, node: NodeId) -> None:
        pr = self.progress.get(node)
        if self.role is Role.LEADER and pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, node: NodeId, ok: bool) -> None:
        pr = self.progress.get(node)
        if self.role is not Role.LEADER or pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = Index(0)
        pr.become_probe()
        pr.probe_sent = True  # wait for the follower's answer before probing again
