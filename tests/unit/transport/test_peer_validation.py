"""`codec.validate.check_message`: ranges and combinations no honest peer sends are refused."""

from __future__ import annotations

import pytest

from raftkv.codec.validate import LIMIT, InvalidMessage, check_message
from raftkv.codec.wire import (
    PROTOCOL_VERSION,
    Hello,
    Ping,
    SnapshotChunk,
    SnapshotRejected,
    WireMessage,
)
from raftkv.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    InstallSnapshot,
    ReadIndexResponse,
    RequestVote,
)
from raftkv.raft.types import ConfState, Entry, Index, NodeId, Snapshot, SnapshotMeta, Term
from tests.unit.transport.test_wire_codec import SAMPLES

A, B = NodeId("node-1"), NodeId("node-2")


def append(
    term: int, prev: tuple[int, int], entries: list[tuple[int, int]], commit: int = 0
) -> AppendEntries:
    return AppendEntries(
        Term(term),
        A,
        B,
        Index(prev[0]),
        Term(prev[1]),
        tuple(Entry(Term(t), Index(i)) for i, t in entries),
        Index(commit),
    )


def snapshot(
    term: int, index: int, snap_term: int, voters: tuple[str, ...] = (A,)
) -> InstallSnapshot:
    conf = ConfState(tuple(NodeId(v) for v in voters), ())
    return InstallSnapshot(
        Term(term), A, B, Snapshot(SnapshotMeta(Index(index), Term(snap_term), conf))
    )


@pytest.mark.parametrize(
    "msg",
    [*SAMPLES, Ping(), SnapshotRejected(Index(9), Term(2), "frame 3: CRC mismatch")],
    ids=lambda m: type(m).__name__,
)
def test_honest_messages_pass(msg: WireMessage) -> None:
    check_message(msg)


def test_largest_values_pass() -> None:
    top = LIMIT - 1
    check_message(Heartbeat(Term(top), A, B, Index(top)))
    check_message(append(top, (top - 2, top), [(top - 1, top), (top, top)], commit=top))


BAD: dict[str, WireMessage] = {
    "heartbeat term 2**64-1": Heartbeat(Term(2**64 - 1), A, B, Index(0)),
    "heartbeat term 2**63": Heartbeat(Term(LIMIT), A, B, Index(0)),
    "negative term": Heartbeat(Term(-1), A, B, Index(0)),
    "negative commit": Heartbeat(Term(1), A, B, Index(-5)),
    "huge context": Heartbeat(Term(1), A, B, Index(0), b"x" * 5000),
    "prev term above term": append(2, (3, 3), []),
    "prev index 0 with a term": append(2, (0, 1), []),
    "prev index with term 0": append(2, (4, 0), []),
    "gap in entries": append(2, (1, 1), [(2, 1), (4, 1)]),
    "entries not after prev": append(2, (1, 1), [(3, 1)]),
    "entry term above leader term": append(2, (1, 1), [(2, 3)]),
    "entry term below prev term": append(3, (1, 2), [(2, 1)]),
    "decreasing entry terms": append(3, (0, 0), [(1, 2), (2, 1)]),
    "entry index beyond 2**63": append(5, (LIMIT - 1, 5), [(LIMIT, 5)]),
    "vote log term above term": RequestVote(Term(2), A, B, Index(3), Term(5)),
    "vote index 0 with a term": RequestVote(Term(2), A, B, Index(0), Term(1)),
    "hint term above term": AppendEntriesResponse(Term(2), A, B, Index(1), True, Index(1), Term(9)),
    "read index out of range": ReadIndexResponse(Term(1), A, B, Index(LIMIT), b""),
    "snapshot term above term": snapshot(2, 10, 3),
    "snapshot at index 0": snapshot(2, 0, 0),
    "snapshot without voters": snapshot(2, 10, 1, voters=()),
    "snapshot voters unsorted": snapshot(2, 10, 1, voters=("n2", "n1")),
    "snapshot bad member id": snapshot(2, 10, 1, voters=("bad id!",)),
    "bad from id": Heartbeat(Term(1), NodeId("x" * 200), B, Index(0)),
    "empty to id": Heartbeat(Term(1), A, NodeId(""), Index(0)),
    "hello bad node id": Hello(PROTOCOL_VERSION, "c", NodeId("../etc")),
    "hello version out of range": Hello(2**40, "c", A),
    "hello format version out of range": Hello(PROTOCOL_VERSION, "c", A, 2**64 - 1),
    "hello command set negative": Hello(PROTOCOL_VERSION, "c", A, 1, -1),
    "chunk beyond size": SnapshotChunk(Index(1), Term(1), 4, 5, b"xx"),
    "chunk negative offset": SnapshotChunk(Index(1), Term(1), -1, 5, b"x"),
    "chunk size beyond cap": SnapshotChunk(Index(1), Term(1), 0, 1001, b""),
    "chunk at index 0": SnapshotChunk(Index(0), Term(1), 0, 1, b"x"),
    "rejection index out of range": SnapshotRejected(Index(-1), Term(1), "bad"),
    "rejection term out of range": SnapshotRejected(Index(1), Term(2**64), "bad"),
    "rejection reason too long": SnapshotRejected(Index(1), Term(1), "x" * 513),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_nonsense_is_refused(case: str) -> None:
    with pytest.raises(InvalidMessage):
        check_message(BAD[case], max_snapshot_bytes=1000)
