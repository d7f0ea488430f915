"""Linearizable reads without log entries: ReadIndex (thesis §6.4) and the lease (§6.4.1).

Rules:
- ReadIndex: the leader notes its commit index when a read arrives — once it has committed an
  entry of its term (§6.4 step 1; until then reads wait in `reads_before_commit`) — and answers
  once a quorum of voters acknowledged a heartbeat sent after that (step 2). One heartbeat round
  is shared by the reads of a loop turn; an ack for a later round confirms every earlier one.
- Lease: `lease_read_index()` returns the commit index at once while the leader holds a lease
  (`lease.py`) — and has committed an entry of its term, no leadership transfer was started in
  the term, no configuration change is in flight — else None, and the caller falls back to
  ReadIndex. Either way the caller serves the read once applied >= the index (step 4).
- A mixin of `Raft` (it uses the core's log, configuration and outbox); no state of its own
  beyond the lists declared on `Raft`.
"""

from __future__ import annotations

import msgspec

from raftkv.raft import quorum
from raftkv.raft.config import RaftConfig
from raftkv.raft.errors import NotLeader
from raftkv.raft.lease import LeaseTracker
from raftkv.raft.log import RaftLog
from raftkv.raft.messages import AnyMessage, ReadIndexRequest, ReadIndexResponse
from raftkv.raft.types import ConfState, Index, NodeId, ReadState, Role, Term


class PendingRead(msgspec.Struct, gc=False):
    index: Index
    context: bytes
    requester: NodeId  # self for local reads, else the follower to answer
    acks: set[NodeId]


class ReadOnly:
    """ReadIndex and lease reads; mixed into `Raft`, which provides the attributes below."""

    id: NodeId
    cfg: RaftConfig
    term: Term
    role: Role
    leader: NodeId | None
    conf: ConfState
    log: RaftLog
    clock: int
    lead_transferee: NodeId | None
    pending_conf_index: Index
    lease: LeaseTracker
    read_states: list[ReadState]
    pending_reads: list[PendingRead]  # leader: awaiting a heartbeat quorum
    reads_before_commit: list[PendingRead]  # leader: awaiting first commit in term
    need_read_heartbeat: bool  # deferred until flush()

    def _send(self, msg: AnyMessage) -> None:
        raise NotImplementedError

    def _committed_in_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    # -- lease (thesis §6.4.1) ----------------------------------------------------------------
    def lease_read_index(self) -> Index | None:
        """The read index if the leader holds its lease now; None: use `read_index` instead."""
        if (
            self.role is not Role.LEADER
            or not self.cfg.check_quorum  # the followers' promise rides on check-quorum rules
            or self.lead_transferee is not None
            or self.pending_conf_index > self.log.applied  # quorums may be about to change
            or not self._committed_in_term()  # §6.4 step 1 (the no-op rule) holds for leases too
            or not self.lease.holds(self.conf.voters, self.id, self.clock)
        ):
            return None
        return self.log.committed

    # -- ReadIndex (thesis §6.4) --------------------------------------------------------------
    def read_index(self, context: bytes) -> None:
        if self.role is Role.LEADER:
            self._handle_read_request(context, self.id)
        elif self.leader is not None:
            self._send(ReadIndexRequest(self.term, self.id, self.leader, context))
        else:
            raise NotLeader(None)

    def _handle_read_request(self, context: bytes, requester: NodeId) -> None:
        read = PendingRead(self.log.committed, context, requester, {self.id})
        if not self._committed_in_term():
            # §6.4 step 1: our commit index is only known current once we commit in our term.
            self.reads_before_commit.append(read)
            return
        self._start_read(read)

    def _start_read(self, read: PendingRead) -> None:
        read.index = self.log.committed
        if quorum.quorum_size(self.conf.voters) <= 1:
            self._answer_read(read)
            return
        self.pending_reads.append(read)
        self.need_read_heartbeat = True  # one heartbeat round shared by this turn's reads

    def _release_reads_before_commit(self) -> None:
        if self.reads_before_commit and self._committed_in_term():
            waiting, self.reads_before_commit = self.reads_before_commit, []
            for read in waiting:
                self._start_read(read)

    def _ack_read(self, context: bytes, node: NodeId) -> None:
        for pos, read in enumerate(self.pending_reads):
            if read.context == context:
                read.acks.add(node)
                voters_acked = sum(1 for v in self.conf.voters if v in read.acks)
                if voters_acked >= quorum.quorum_size(self.conf.voters):
                    # An ack for a later round confirms every earlier one too.
                    done, self.pending_reads = (
                        self.pending_reads[: pos + 1],
                        self.pending_reads[pos + 1 :],
                    )
                    for r in done:
                        self._answer_read(r)
                return

    def _answer_read(self, read: PendingRead) -> None:
        if read.requester == self.id:
            self.read_states.append(ReadState(read.index, read.context))
        else:
            self._send(
                ReadIndexResponse(self.term, self.id, read.requester, read.index, read.context)
            )
