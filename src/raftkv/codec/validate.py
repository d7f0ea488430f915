"""Semantic checks of decoded peer frames: ranges and combinations no honest peer sends.

Rules:
- The msgspec decoder (`raftkv.codec.wire`) checks types; this module checks values, BEFORE a
  message reaches the core (ARCHITECTURE §7: every byte from outside is untrusted). Anything
  wrong raises `InvalidMessage` (a `FrameError`), so the transport drops the connection.
- Terms and indices are 0 <= x < 2**63 (`LIMIT`): the log, the hard state and SQLite store
  them as signed 64-bit integers; a Heartbeat with term 2**64-1 must never reach the core
  (it once made the node die in `struct.pack` at its next campaign, and again on restart).
- Combinations (the sender's own term bounds every term it reports, §5.1; an index of 0 pairs
  only with term 0; the entries of an AppendEntries are contiguous after `prev_index` with
  non-decreasing terms, §5.3 Log Matching) are checked because the core assumes them.
- Node ids follow the config's rule (1-63 of `[A-Za-z0-9._-]`, starting alphanumeric).
- Pure: no I/O. Cost is O(1) per message plus two list comprehensions over an append's entries.
"""

from __future__ import annotations

import re
from typing import Final

from raftkv.codec.forward import ForwardBatch, ForwardReplies, InvalidForward, check_forward
from raftkv.codec.wire import FrameError, Hello, Ping, SnapshotChunk, SnapshotRejected, WireMessage
from raftkv.raft.messages import (
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
from raftkv.raft.types import ConfState

LIMIT: Final = 1 << 63
"""Terms, indices, offsets and sizes must be below this (signed 64-bit storage)."""

MAX_CONTEXT_BYTES: Final = 4096
"""ReadIndex / heartbeat contexts are short request ids; more is not a context."""

NODE_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_CLUSTER_NAME_CHARS: Final = 256
MAX_REASON_CHARS: Final = 512  # SnapshotRejected.reason: a log line's worth


class InvalidMessage(FrameError):
    """A well-formed frame whose values no honest peer sends."""


def _in_range(name: str, value: int) -> None:
    if not 0 <= value < LIMIT:
        raise InvalidMessage(f"{name} {value} out of range [0, 2**63)")


def valid_node_id(node_id: str) -> bool:
    return NODE_ID_RE.fullmatch(node_id) is not None


def _node(name: str, node_id: str) -> None:
    if not valid_node_id(node_id):
        raise InvalidMessage(f"{name} {node_id[:80]!r} is not a valid node id")


def _index_term(what: str, index: int, term: int, msg_term: int) -> None:
    """(index, term) of a log position the sender reports: term <= its own term, and position
    0 is the empty log's (term 0) only."""
    _in_range(f"{what} index", index)
    _in_range(f"{what} term", term)
    if term > msg_term:
        raise InvalidMessage(f"{what} term {term} above the message's term {msg_term}")
    if (index == 0) != (term == 0):
        raise InvalidMessage(f"{what} (index {index}, term {term}): index 0 pairs with term 0 only")


def _context(context: bytes) -> None:
    if len(context) > MAX_CONTEXT_BYTES:
        raise InvalidMessage(f"context of {len(context)} bytes (limit {MAX_CONTEXT_BYTES})")


def _conf(conf: ConfState) -> None:
    voters, learners = conf.voters, conf.learners
    for n in (*voters, *learners):
        _node("member", n)
    if not voters:
        raise InvalidMessage("snapshot configuration without voters")
    if list(voters) != sorted(set(voters)) or list(learners) != sorted(set(learners)):
        raise InvalidMessage("snapshot configuration not sorted or with duplicates")
    if set(voters) & set(learners):
        raise InvalidMessage("snapshot configuration: a node is both voter and learner")


def _append(msg: AppendEntries) -> None:
    _index_term("prev", msg.prev_index, msg.prev_term, msg.term)
    _in_range("commit", msg.commit)
    entries = msg.entries
    if not entries:
        return
    first = msg.prev_index + 1
    if [e.index for e in entries] != list(range(first, first + len(entries))):
        raise InvalidMessage(f"entries not contiguous after prev_index {msg.prev_index}")
    if first + len(entries) > LIMIT:
        raise InvalidMessage("entry index out of range [0, 2**63)")
    terms = [e.term for e in entries]
    # §5.3: terms never decrease along a log, none precedes prev_term nor exceeds the leader's.
    if terms[0] < msg.prev_term or terms[-1] > msg.term or terms != sorted(terms):
        raise InvalidMessage(
            f"entry terms {terms[0]}..{terms[-1]} not non-decreasing within "
            f"[prev_term {msg.prev_term}, term {msg.term}]"
        )
    if terms[0] < 1:
        raise InvalidMessage("an entry with term 0")


def check_message(msg: WireMessage, *, max_snapshot_bytes: int = LIMIT - 1) -> None:
    """Raise `InvalidMessage` if `msg` holds values no honest peer sends."""
    match msg:
        case Hello(protocol_version=version, cluster_name=cluster, node_id=node_id):
            for name, value in (
                ("protocol version", version),
                ("format version", msg.format_version),
                ("command set", msg.command_set),
                ("forwarding version", msg.forwarding),
            ):
                if not 0 <= value < 1 << 16:
                    raise InvalidMessage(f"Hello {name} {value} out of range")
            if not (1 <= msg.format_version < 1 << 16 and 1 <= msg.command_set < 1 << 16):
                raise InvalidMessage(
                    f"advertised versions out of range (format {msg.format_version}, "
                    f"command set {msg.command_set})"
                )
            if len(cluster) > MAX_CLUSTER_NAME_CHARS:
                raise InvalidMessage("cluster name too long")
            _node("Hello node id", node_id)
            return
        case Ping():
            return
        case ForwardBatch() | ForwardReplies():
            try:
                check_forward(msg)
            except InvalidForward as exc:
                raise InvalidMessage(f"{type(msg).__name__}: {exc}") from None
            return
        case SnapshotRejected(index=index, term=term, reason=reason):
            _in_range("snapshot index", index)
            _in_range("snapshot term", term)
            if len(reason) > MAX_REASON_CHARS:
                raise InvalidMessage(f"snapshot rejection reason of {len(reason)} characters")
            return
        case SnapshotChunk(index=index, term=term, offset=offset, total_size=total, data=data):
            _in_range("snapshot index", index)
            _in_range("snapshot term", term)
            if index == 0 or term == 0:
                raise InvalidMessage("snapshot chunk at index or term 0")
            if not 0 <= total <= max_snapshot_bytes:
                raise InvalidMessage(
                    f"snapshot of {total} bytes exceeds raft.max_snapshot_bytes "
                    f"({max_snapshot_bytes})"
                )
            if not 0 <= offset <= total - len(data):
                raise InvalidMessage(
                    f"snapshot chunk [{offset}, +{len(data)}) outside the size {total}"
                )
            return
        case _:
            pass
    # A Raft message.
    _in_range("term", msg.term)
    _node("from", msg.from_)
    _node("to", msg.to)
    match msg:
        case AppendEntries():
            _append(msg)
        case AppendEntriesResponse(index=index, hint_index=hint_index, hint_term=hint_term):
            _in_range("index", index)
            _in_range("hint_index", hint_index)
            _in_range("hint_term", hint_term)
            if hint_term > msg.term:
                raise InvalidMessage(f"hint_term {hint_term} above the message's term {msg.term}")
        case RequestVote(last_log_index=index, last_log_term=term):
            _index_term("last log", index, term, msg.term)
        case Heartbeat(commit=commit, context=context, round=rnd):
            _in_range("commit", commit)
            _in_range("round", rnd)
            _context(context)
        case HeartbeatResponse(context=context, round=rnd):
            _in_range("round", rnd)
            _context(context)
        case ReadIndexRequest(context=context):
            _context(context)
        case ReadIndexResponse(index=index, context=context):
            _in_range("index", index)
            _context(context)
        case InstallSnapshot(snapshot=snapshot):
            meta = snapshot.meta
            _index_term("snapshot", meta.index, meta.term, msg.term)
            if meta.index == 0:
                raise InvalidMessage("snapshot at index 0")
            _conf(meta.conf)
        case RequestVoteResponse() | TimeoutNow():
            pass
