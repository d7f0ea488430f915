"""Messages exchanged between Raft peers.

Rules:
- Every message carries `term`, `from_` and `to`; the core rejects or ignores by term first (§5.1).
- The classes are a msgspec tagged union (tag = class name) so `raftkv.codec` can encode and
  decode them directly; `array_like` keeps them compact on the wire.
- Message names follow the paper; ReadIndex and TimeoutNow follow the thesis (§6.4, §3.10).
"""

from __future__ import annotations

import msgspec

from raftkv.raft.types import Entry, Index, NodeId, Snapshot, Term


class Message(msgspec.Struct, frozen=True, array_like=True, tag=True, gc=False):
    term: Term
    from_: NodeId
    to: NodeId


class RequestVote(Message, frozen=True):
    """§5.2 vote request; `pre_vote` marks a thesis §9.6 PreVote round (term is the would-be term).

    `transfer` marks an election started by TimeoutNow (thesis §3.10), which must bypass the
    'I heard from a leader recently' check.
    """

    last_log_index: Index
    last_log_term: Term
    pre_vote: bool = False
    transfer: bool = False


class RequestVoteResponse(Message, frozen=True):
    granted: bool
    pre_vote: bool = False


class AppendEntries(Message, frozen=True):
    """§5.3: entries after (prev_index, prev_term); `commit` is the leader's commit index."""

    prev_index: Index
    prev_term: Term
    entries: tuple[Entry, ...]
    commit: Index


class AppendEntriesResponse(Message, frozen=True):
    """Success: `index` is the follower's last index matching the leader's log.

    Reject: `index` is the rejected prev_index; (`hint_term`, `hint_index`) is the fast back-off
    hint: the follower's term at min(prev_index, last_index) and the first index of that term.
    """

    index: Index
    reject: bool = False
    hint_index: Index = Index(0)
    hint_term: Term = Term(0)


class Heartbeat(Message, frozen=True):
    """Leader liveness and commit propagation; `context` ties it to a ReadIndex round.

    `round` (thesis §6.4.1) is the leader's lease clock when sent, plus one (0: none); a
    follower echoes it only as a promise not to elect anyone else for an election timeout.
    Added later than the other fields: an older peer ignores it and echoes 0 (no lease)."""

    commit: Index
    context: bytes = b""
    round: int = 0


class HeartbeatResponse(Message, frozen=True):
    context: bytes = b""
    round: int = 0  # the Heartbeat's round if the follower made the lease promise, else 0


class InstallSnapshot(Message, frozen=True):
    """§7: the leader's snapshot for a follower that needs compacted entries."""

    snapshot: Snapshot


class TimeoutNow(Message, frozen=True):
    """Thesis §3.10: the leader asks an up-to-date follower to start an election at once."""


class ReadIndexRequest(Message, frozen=True):
    """Thesis §6.4: a follower asks the leader for a read index on behalf of its clients."""

    context: bytes


class ReadIndexResponse(Message, frozen=True):
    """The leader's answer; `index` 0 with `reject` means it could not serve (not leader yet)."""

    index: Index
    context: bytes
    reject: bool = False


AnyMessage = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | TimeoutNow
    | ReadIndexRequest
    | ReadIndexResponse
)
