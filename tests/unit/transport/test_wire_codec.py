"""Frame encoding (`raftkv.codec.wire`): round trips, incremental parsing, every reject path."""

from __future__ import annotations

import struct

import msgspec
import pytest

from raftkv.codec.wire import (
    PROTOCOL_VERSION,
    WIRE_VERSION,
    FrameError,
    FrameParser,
    Hello,
    SnapshotChunk,
    WireMessage,
    decode_payload,
    encode_frame,
    encode_frames,
)
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
from raftkv.raft.types import (
    ConfState,
    Entry,
    EntryKind,
    Index,
    NodeId,
    Snapshot,
    SnapshotMeta,
    Term,
)

A, B = NodeId("node-1"), NodeId("node-2")
T1 = Term(3)

SAMPLES: list[WireMessage] = [
    Hello(PROTOCOL_VERSION, "prod", A),
    SnapshotChunk(Index(10), Term(2), 0, 5, b"\x00\xffabc"),
    RequestVote(T1, A, B, Index(7), Term(2), pre_vote=True, transfer=True),
    RequestVoteResponse(T1, B, A, granted=True),
    AppendEntries(
        T1,
        A,
        B,
        Index(4),
        Term(2),
        (
            Entry(T1, Index(5), EntryKind.NORMAL, b"put x"),
            Entry(T1, Index(6), EntryKind.CONF_CHANGE, b"\x01\x02"),
        ),
        Index(4),
    ),
    AppendEntriesResponse(T1, B, A, Index(4), reject=True, hint_index=Index(2), hint_term=Term(1)),
    Heartbeat(T1, A, B, Index(9), b"ctx"),
    HeartbeatResponse(T1, B, A, b"ctx"),
    InstallSnapshot(
        T1, A, B, Snapshot(SnapshotMeta(Index(10), Term(2), ConfState((A, B), ())), b"data")
    ),
    TimeoutNow(T1, A, B),
    ReadIndexRequest(T1, B, A, b"r1"),
    ReadIndexResponse(T1, A, B, Index(12), b"r1", reject=False),
]


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(msg: WireMessage) -> None:
    data = encode_frame(msg)
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4
    assert data[4] == WIRE_VERSION
    assert FrameParser(1 << 20).feed(data) == [msg]


def test_parser_reassembles_frames_fed_byte_by_byte() -> None:
    data = encode_frames(SAMPLES)
    parser = FrameParser(1 << 20)
    out: list[WireMessage] = []
    for i in range(len(data)):
        out += parser.feed(data[i : i + 1])
    assert out == SAMPLES
    assert parser.buffered == 0


def test_parser_returns_complete_frames_and_keeps_the_rest() -> None:
    data = encode_frames(SAMPLES[:3])
    parser = FrameParser(1 << 20)
    cut = len(data) - 3
    assert parser.feed(data[:cut]) == SAMPLES[:2]
    assert parser.buffered > 0
    assert parser.feed(data[cut:]) == [SAMPLES[2]]


def test_oversized_length_is_refused_before_the_body_arrives() -> None:
    parser = FrameParser(1000)
    with pytest.raises(FrameError, match="exceeds the limit"):
        parser.feed(struct.pack(">I", 1001))


def test_frame_at_the_limit_is_accepted() -> None:
    msg = Heartbeat(T1, A, B, Index(1), b"x" * 50)
    data = encode_frame(msg)
    assert FrameParser(len(data) - 4).feed(data) == [msg]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (struct.pack(">I", 0), "zero-length"),
        (
            frame(bytes([WIRE_VERSION + 1]) + msgspec.msgpack.encode(["TimeoutNow", 1, "a", "b"])),
            "version",
        ),
        (frame(bytes([WIRE_VERSION]) + b"\xc1\xc1"), "malformed"),
        (frame(bytes([WIRE_VERSION]) + msgspec.msgpack.encode(["Nope", 1, "a", "b"])), "invalid"),
        (
            frame(bytes([WIRE_VERSION]) + msgspec.msgpack.encode(["Heartbeat", "x", "a", "b", 1])),
            "invalid",
        ),
        (frame(bytes([WIRE_VERSION]) + msgspec.msgpack.encode({"a": 1})), "invalid"),
        (frame(bytes([WIRE_VERSION])), "malformed"),
    ],
    ids=["zero-length", "version", "garbage", "unknown-tag", "bad-field", "not-array", "empty"],
)
def test_bad_frames_raise_frame_error(data: bytes, match: str) -> None:
    with pytest.raises(FrameError, match=match):
        FrameParser(1 << 20).feed(data)


def test_decode_payload_rejects_empty_payload() -> None:
    with pytest.raises(FrameError):
        decode_payload(b"")
