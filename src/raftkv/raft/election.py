"""Elections (Raft §5.2, §5.4.1; thesis §3.10 transfer, §4.2.3 disruptive servers, §6.4.1 lease
promise, §9.6 PreVote): campaigning, asking for and counting votes, answering vote requests.

Rules:
- A mixin of `Raft` (raft.py), which provides the state and the role changes declared below;
  no state of its own. Pure and deterministic like the rest of the core.
- A candidate's own vote requests are `persisted_msgs` (they leave after its term and vote are
  durable), and its election timer starts when they leave (`hard_state_persisted`).
- A vote is granted only to a candidate whose log is at least as up-to-date (§5.4.1), never while
  a leader may still be serving reads on our lease promise (§6.4.1) unless the candidate was
  asked to take over by that leader (TimeoutNow, §3.10).
"""

from __future__ import annotations

from raftkv.raft import quorum
from raftkv.raft.config import RaftConfig
from raftkv.raft.errors import Compacted
from raftkv.raft.log import RaftLog
from raftkv.raft.messages import (
    AnyMessage,
    AppendEntries,
    Heartbeat,
    InstallSnapshot,
    RequestVote,
    RequestVoteResponse,
)
from raftkv.raft.types import ConfState, EntryKind, Index, NodeId, Role, Term


class Elections:
    """Campaigns and votes; mixed into `Raft`, which provides the attributes below."""

    id: NodeId
    cfg: RaftConfig
    term: Term
    vote: NodeId | None
    role: Role
    leader: NodeId | None
    conf: ConfState
    log: RaftLog
    votes: dict[NodeId, bool]
    votes_unsent: bool
    election_elapsed: int
    heard_elapsed: int

    def _send(self, msg: AnyMessage) -> None:
        raise NotImplementedError

    def promotable(self) -> bool:
        raise NotImplementedError

    def become_follower(self, term: Term, leader: NodeId | None) -> None:
        raise NotImplementedError

    def become_pre_candidate(self) -> None:
        raise NotImplementedError

    def become_candidate(self) -> None:
        raise NotImplementedError

    def become_leader(self) -> None:
        raise NotImplementedError

    def _step_follower(self, msg: AnyMessage) -> None:
        raise NotImplementedError

    def hup(self, *, transfer: bool) -> None:
        if self.role is Role.LEADER or not self.promotable():
            return
        if not transfer and self._lease_promised():
            return  # §6.4.1: our own vote would break the promise too
        if self._has_unapplied_conf_change():
            return  # etcd's rule: the conf we would campaign with may be about to change
        if self.cfg.pre_vote and not transfer:
            self._campaign_pre_vote()
        else:
            self._campaign(transfer=transfer)

    def _has_unapplied_conf_change(self) -> bool:
        if self.log.committed <= self.log.applied:
            return False
        try:
            pending = self.log.slice(
                Index(self.log.applied + 1), Index(self.log.committed + 1), 1 << 62
            )
        except Compacted:
            return False
        return any(e.kind is EntryKind.CONF_CHANGE for e in pending)

    def _campaign_pre_vote(self) -> None:
        self.become_pre_candidate()
        # Thesis §9.6: ask for votes in the term we would campaign in, without entering it.
        self._request_votes(Term(self.term + 1), pre_vote=True, transfer=False)

    def _campaign(self, *, transfer: bool) -> None:
        self.become_candidate()
        self._request_votes(self.term, pre_vote=False, transfer=transfer)
        # §5.2: the randomized timeout is the time to wait for votes, so it starts when the
        # requests leave, after our fsync of term and vote. Counted from now, an fsync slower
        # than the timeout (a loaded disk) ends the election before anyone was asked; the
        # grants that come later are ignored by the pre-candidate we fell back to, and a
        # TimeoutNow transfer (§3.10) loses its bypass of the others' lease promise.
        self.votes_unsent = self.role is Role.CANDIDATE

    def hard_state_persisted(self, term: Term) -> None:
        """The hard state of `term` is durable and the Ready's persisted messages are sent."""
        if self.votes_unsent and term == self.term:
            self.votes_unsent = False
            self.election_elapsed = 0

    def _request_votes(self, term: Term, *, pre_vote: bool, transfer: bool) -> None:
        self.votes[self.id] = True
        if self._tally():
            return  # a single-voter cluster wins at once
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for node in self.conf.voters:
            if node != self.id:
                self._send(
                    RequestVote(
                        term,
                        self.id,
                        node,
                        last_index,
                        last_term,
                        pre_vote=pre_vote,
                        transfer=transfer,
                    )
                )

    def _tally(self) -> bool:
        """Act on the votes so far; True if the election ended."""
        result = quorum.vote_result(self.conf.voters, self.votes)
        if result is None:
            return False
        if result:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(transfer=False)
            else:
                self.become_leader()
        else:
            self.become_follower(self.term, None)
        return True

    def _in_lease(self) -> bool:
        """Thesis §4.2.3: we heard from a leader within the minimum election timeout."""
        return (
            self.cfg.check_quorum
            and self.leader is not None
            and self.election_elapsed < self.cfg.election_ticks
        )

    def _lease_promised(self) -> bool:
        """Thesis §6.4.1: we may have echoed a leader's lease round within the last election
        timeout (or restarted since): vote for, and become, no other candidate until it ends."""
        return (
            self.cfg.lease_ticks > 0
            and self.cfg.check_quorum
            and self.role is not Role.LEADER
            and self.heard_elapsed < self.cfg.election_ticks
            and self.conf.voters != (self.id,)
        )

    def vote_facts(self) -> tuple[bool, bool]:
        """(in_lease, lease_promised) as the vote rules see them now: read-only, for the
        runtime's election log, which must state the facts without reaching into the core."""
        return self._in_lease(), self._lease_promised()

    def _handle_vote_request(self, msg: RequestVote) -> None:
        can_vote = (
            self.vote == msg.from_
            or (self.vote is None and self.leader is None)
            or (msg.pre_vote and msg.term > self.term)
        )
        if not msg.transfer and self.vote != msg.from_ and self._lease_promised():
            can_vote = False  # §6.4.1: a leader may still be serving reads on our promise
        # §5.4.1: grant only to a candidate whose log is at least as up-to-date as ours.
        granted = can_vote and self.log.is_up_to_date(msg.last_log_index, msg.last_log_term)
        if granted and not msg.pre_vote:
            self.election_elapsed = 0
            self.vote = msg.from_
        term = msg.term if (msg.pre_vote and granted) else self.term
        self._send(RequestVoteResponse(term, self.id, msg.from_, granted, pre_vote=msg.pre_vote))

    def _step_candidate(self, msg: AnyMessage) -> None:
        match msg:
            case RequestVoteResponse(pre_vote=pre, granted=granted):
                if pre == (self.role is Role.PRE_CANDIDATE) and msg.from_ in self.conf.voters:
                    self.votes.setdefault(msg.from_, granted)
                    self._tally()
            case AppendEntries() | Heartbeat() | InstallSnapshot():
                # §5.2: a leader of our term exists; return to follower.
                self.become_follower(msg.term, msg.from_)
                self._step_follower(msg)
            case _:
                pass
