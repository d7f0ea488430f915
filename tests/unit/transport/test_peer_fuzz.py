"""Property-based fuzzing of the peer frame decoder, the validator and the handshake.

Properties: whatever bytes arrive, decoding + validation raises nothing but `FrameError` (zero
crashes), and every message they accept satisfies invariants written here independently of the
validator (zero accepted invalid messages): every integer anywhere in it is in [0, 2**63), every
node id is well formed, an append's entries are contiguous with terms bounded by the message's.
The example counts are bounded so the default test run stays fast.
"""

from __future__ import annotations

import enum
import re
import struct
import types
import typing
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftkv.codec.validate import check_message
from raftkv.codec.wire import (
    PROTOCOL_VERSION,
    WIRE_VERSION,
    FrameError,
    FrameParser,
    Hello,
    WireMessage,
    encode_frames,
)
from raftkv.raft.messages import AppendEntries, Message
from raftkv.raft.types import Index, NodeId, Term
from raftkv.transport._common import PeerRefused, ProtocolViolation
from raftkv.transport._handshake import check_hello
from tests.unit.transport.test_wire_codec import SAMPLES

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
TAGS = sorted({"Hello", "SnapshotChunk", "Ping", *(type(m).__name__ for m in SAMPLES)})

# Integers around every boundary that matters; ids good and bad.
ints = st.one_of(
    st.integers(-3, 3),
    st.integers(2**63 - 3, 2**63 + 3),
    st.integers(2**64 - 3, 2**64 - 1),
    st.integers(-(2**63), 2**64 - 1),
)
ids = st.one_of(
    st.sampled_from(["node-1", "node-2", "mallory", "", "a b", "x" * 70]), st.text(max_size=8)
)
leaf = st.one_of(ints, ids, st.binary(max_size=16), st.booleans(), st.none())
values = st.recursive(leaf, lambda inner: st.lists(inner, max_size=5), max_leaves=24)


def typed(tp: Any) -> st.SearchStrategy[Any]:
    """Values of a message field's type, extreme ones included (no global registrations)."""
    if tp in (Term, Index, int):
        return ints
    if tp is NodeId or tp is str:
        return ids
    if tp is bytes:
        return st.binary(max_size=16)
    if tp is bool:
        return st.booleans()
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    origin = typing.get_origin(tp)
    if origin is tuple:
        return st.lists(typed(typing.get_args(tp)[0]), max_size=4).map(tuple)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(typed(arg) for arg in typing.get_args(tp)))
    if tp is type(None):
        return st.none()
    hints = typing.get_type_hints(tp)
    return st.builds(tp, **{f.name: typed(hints[f.name]) for f in msgspec.structs.fields(tp)})


TYPED = st.one_of(*(typed(type(m)) for m in SAMPLES))


def accepted_is_sane(msg: WireMessage) -> None:
    """Independent invariants of anything the decoder + validator let through."""

    def walk(value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            assert 0 <= value < 2**63, value
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(msgspec.to_builtins(msg))
    if isinstance(msg, Message):
        assert ID.fullmatch(msg.from_) and ID.fullmatch(msg.to)
        assert 0 <= msg.term < 2**63
    if isinstance(msg, AppendEntries):
        assert msg.prev_term <= msg.term
        for offset, entry in enumerate(msg.entries, start=1):
            assert entry.index == msg.prev_index + offset
            assert msg.prev_term <= entry.term <= msg.term
    if isinstance(msg, Hello):
        assert ID.fullmatch(msg.node_id)


def parse_and_check(data: bytes) -> list[WireMessage]:
    """What the receive loop does with bytes: parse, then validate each message."""
    out: list[WireMessage] = []
    try:
        for msg in FrameParser(1 << 20).feed(data):
            check_message(msg, max_snapshot_bytes=1 << 30)
            out.append(msg)
    except FrameError:
        pass
    return out


def payload(tag: str, fields: list[Any]) -> bytes:
    body = bytes([WIRE_VERSION]) + msgspec.msgpack.encode([tag, *fields])
    return struct.pack(">I", len(body)) + body


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(data: bytes) -> None:
    for msg in parse_and_check(data):
        accepted_is_sane(msg)


@FUZZ
@given(st.sampled_from(TAGS), st.lists(values, max_size=9))
def test_structured_frames_never_crash_nor_pass_invalid(tag: str, fields: list[Any]) -> None:
    for msg in parse_and_check(payload(tag, fields)):
        accepted_is_sane(msg)


@FUZZ
@given(st.lists(TYPED, min_size=1, max_size=3))
def test_typed_messages_with_boundary_values(msgs: list[WireMessage]) -> None:
    """Well-typed messages with extreme values: the validator is the only line of defence."""
    accepted = parse_and_check(encode_frames(msgs))
    for msg in accepted:
        accepted_is_sane(msg)
    # The validator is no rubber stamp: a message it refuses stops the stream there.
    assert accepted == msgs[: len(accepted)]


@FUZZ
@given(st.data())
def test_mutated_honest_streams_never_crash_nor_pass_invalid(data: st.DataObject) -> None:
    stream = bytearray(encode_frames(SAMPLES))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(stream) - 1))
        match data.draw(st.sampled_from(["flip", "insert", "delete"])):
            case "flip":
                stream[pos] ^= data.draw(st.integers(1, 255))
            case "insert":
                stream[pos:pos] = data.draw(st.binary(min_size=1, max_size=9))
            case _:
                del stream[pos]
    for msg in parse_and_check(bytes(stream)):
        accepted_is_sane(msg)


MEMBERS = {NodeId("node-1"), NodeId("node-2")}


@FUZZ
@given(st.sampled_from(TAGS), st.lists(values, max_size=5), st.none() | st.lists(ids, max_size=2))
def test_handshake_accepts_only_a_member_hello(
    tag: str, fields: list[Any], cert_ids: list[str] | None
) -> None:
    for msg in parse_and_check(payload(tag, fields)) or []:
        try:
            hello = check_hello(
                msg,
                cluster_name="prod",
                own_id=NodeId("node-2"),
                is_member=MEMBERS.__contains__,
                cert_node_ids=cert_ids,
            )
        except (FrameError, ProtocolViolation, PeerRefused):
            continue
        assert hello.protocol_version == PROTOCOL_VERSION
        assert hello.cluster_name == "prod"
        assert hello.node_id == "node-1"
        assert cert_ids is None or "node-1" in cert_ids


@FUZZ
@given(st.sampled_from(["node-1", "node-2", "node-3", "mallory"]), st.sampled_from(["prod", "x"]))
def test_handshake_on_well_formed_hellos(node: str, cluster: str) -> None:
    hello = Hello(PROTOCOL_VERSION, cluster, NodeId(node))
    try:
        check_hello(
            hello,
            cluster_name="prod",
            own_id=NodeId("node-2"),
            is_member=MEMBERS.__contains__,
            cert_node_ids=None,
        )
    except (ProtocolViolation, PeerRefused):
        assert node != "node-1" or cluster != "prod"
    else:
        assert (node, cluster) == ("node-1", "prod")
