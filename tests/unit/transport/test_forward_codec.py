"""The write-forwarding frames (`codec/forward.py`): round trips, bounds, and the Hello gate."""

from __future__ import annotations

import msgspec
import pytest

from raftkv.codec.forward import (
    FORWARDING_VERSION,
    MAX_FORWARD_HEADERS,
    MAX_FORWARDS,
    MAX_HEADER_VALUE_CHARS,
    MAX_TARGET_CHARS,
    ForwardBatch,
    ForwardedReply,
    ForwardedRequest,
    ForwardReplies,
)
from raftkv.codec.validate import InvalidMessage, check_message
from raftkv.codec.wire import (
    PROTOCOL_VERSION,
    FrameError,
    FrameParser,
    Hello,
    Ping,
    SnapshotChunk,
    SnapshotRejected,
    WireMessage,
    decode_payload,
    encode_frame,
    encode_frames,
)
from raftkv.raft.messages import AnyMessage
from raftkv.raft.types import NodeId

A = NodeId("node-1")
HEADERS = (("Content-Type", "application/json"), ("Authorization", "Bearer abc.def"))


def request(i: int = 1, **kw: object) -> ForwardedRequest:
    fields: dict[str, object] = {
        "id": i,
        "method": "PUT",
        "target": "/kv/a%2Fb",
        "headers": HEADERS,
        "body": b'{"value": "v"}',
    }
    fields.update(kw)
    return ForwardedRequest(**fields)  # type: ignore[arg-type]


def reply(i: int = 1, **kw: object) -> ForwardedReply:
    fields: dict[str, object] = {
        "id": i,
        "status": 200,
        "headers": (("Content-Type", "application/json; charset=utf-8"), ("ETag", '"7"')),
        "body": b'{"key": "a/b"}',
    }
    fields.update(kw)
    return ForwardedReply(**fields)  # type: ignore[arg-type]


HONEST: list[WireMessage] = [
    ForwardBatch((request(0), request(2**63 - 1, method="DELETE", body=b""))),
    ForwardBatch((request(5, body=b"\x00\xff" * 1000, target="/kv/x?y=1"),)),
    ForwardReplies((reply(1), reply(2, status=504, headers=(("Retry-After", "1"),)))),
    Hello(PROTOCOL_VERSION, "prod", A, 4, 3, FORWARDING_VERSION),
]


@pytest.mark.parametrize("msg", HONEST, ids=lambda m: type(m).__name__)
def test_round_trip_and_pass_validation(msg: WireMessage) -> None:
    assert decode_payload(encode_frame(msg)[4:]) == msg
    check_message(msg)


def test_a_batch_travels_with_raft_frames_in_one_stream() -> None:
    msgs: list[WireMessage] = [Ping(), HONEST[0], HONEST[2], Ping()]
    parser = FrameParser(1 << 20)
    assert parser.feed(encode_frames(msgs)) == msgs


def test_the_frame_limit_holds_for_a_batch() -> None:
    big = ForwardBatch((request(body=b"x" * 5000),))
    with pytest.raises(FrameError, match="exceeds the limit"):
        FrameParser(4096).feed(encode_frame(big))


BAD: dict[str, WireMessage] = {
    "empty batch": ForwardBatch(()),
    "empty replies": ForwardReplies(()),
    "too many requests": ForwardBatch(tuple(request(i) for i in range(MAX_FORWARDS + 1))),
    "negative id": ForwardBatch((request(-1),)),
    "id 2**63": ForwardBatch((request(2**63),)),
    "reply id 2**64-1": ForwardReplies((reply(2**64 - 1),)),
    "method POST": ForwardBatch((request(method="POST"),)),
    "method GET": ForwardBatch((request(method="GET"),)),
    "target outside /kv/": ForwardBatch((request(target="/auth/users/root"),)),
    "target /kv without slash": ForwardBatch((request(target="/kv?prefix=a"),)),
    "target too long": ForwardBatch((request(target="/kv/" + "a" * MAX_TARGET_CHARS),)),
    "target with space": ForwardBatch((request(target="/kv/a HTTP/1.1\r\nX: y"),)),
    "target with CR": ForwardBatch((request(target="/kv/a\r"),)),
    "target with fragment": ForwardBatch((request(target="/kv/a#b"),)),
    "too many headers": ForwardBatch(
        (request(headers=(("X-A", "b"),) * (MAX_FORWARD_HEADERS + 1)),)
    ),
    "header name with colon": ForwardBatch((request(headers=(("X:A", "b"),)),)),
    "header name empty": ForwardBatch((request(headers=(("", "b"),)),)),
    "header value with LF": ForwardBatch((request(headers=(("X-A", "b\nEvil: 1"),)),)),
    "header value with NUL": ForwardBatch((request(headers=(("X-A", "b\x00"),)),)),
    "header value too long": ForwardBatch(
        (request(headers=(("X-A", "b" * (MAX_HEADER_VALUE_CHARS + 1)),)),)
    ),
    "reply status 99": ForwardReplies((reply(status=99),)),
    "reply status 600": ForwardReplies((reply(status=600),)),
    "reply header with CR": ForwardReplies((reply(headers=(("ETag", '"1"\r'),)),)),
    "hello forwarding version negative": Hello(PROTOCOL_VERSION, "c", A, 1, 1, -1),
    "hello forwarding version huge": Hello(PROTOCOL_VERSION, "c", A, 1, 1, 1 << 16),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_out_of_bounds_is_refused(case: str) -> None:
    with pytest.raises(InvalidMessage):
        check_message(BAD[case])


def test_wrong_field_types_are_frame_errors() -> None:
    # A tag the decoder knows, fields it does not: a FrameError, never another exception.
    payload = b"\x01" + msgspec.msgpack.encode(["ForwardBatch", [[1, "PUT", "/kv/a", [], "s"]]])
    with pytest.raises(FrameError):
        decode_payload(payload)
    payload = b"\x01" + msgspec.msgpack.encode(["ForwardReplies", [[1, "200", [], b""]]])
    with pytest.raises(FrameError):
        decode_payload(payload)


# -- what an older node sees (why the frames are gated on the Hello) --------------------------


class _OldHello(msgspec.Struct, frozen=True, array_like=True, tag="Hello"):
    """The Hello of the release before forwarding frames (no `forwarding` field)."""

    protocol_version: int
    cluster_name: str
    node_id: str
    format_version: int = 1
    command_set: int = 1


_OLD_UNION = AnyMessage | _OldHello | SnapshotChunk | Ping | SnapshotRejected
_old_decoder: msgspec.msgpack.Decoder[object] = msgspec.msgpack.Decoder(_OLD_UNION)  # type: ignore[arg-type]


def test_an_older_node_reads_the_new_hello_and_we_read_its_hello() -> None:
    new = Hello(PROTOCOL_VERSION, "prod", A, 4, 3, FORWARDING_VERSION)
    old = _old_decoder.decode(encode_frame(new)[5:])
    assert old == _OldHello(PROTOCOL_VERSION, "prod", "node-1", 4, 3)
    ours = decode_payload(b"\x01" + msgspec.msgpack.encode(old))
    assert isinstance(ours, Hello) and ours.forwarding == 0  # an old node: forward over HTTP


def test_an_older_node_cannot_decode_a_batch() -> None:
    with pytest.raises(msgspec.ValidationError):
        _old_decoder.decode(encode_frame(HONEST[0])[5:])
