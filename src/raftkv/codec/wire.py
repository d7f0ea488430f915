"""Frame encoding of peer traffic: Raft messages plus the transport's own frames.

Rules:
- A frame is a 4-byte big-endian payload length followed by the payload; the payload is one
  wire-format version byte (`WIRE_VERSION`) then the msgpack encoding of one `WireMessage`.
- `WireMessage` is a msgspec tagged union (tag = class name) of the Raft messages
  (`raftkv.raft.messages.AnyMessage`), the transport frames `Hello`, `SnapshotChunk`, `Ping`
  and `SnapshotRejected`, and the write-forwarding frames (`codec/forward.py`); the core's
  classes are the wire classes, there is no conversion layer.
- Types are checked here; values (ranges, combinations) in `raftkv.codec.validate`.
- One module-level Encoder and Decoder are reused (msgspec is faster that way); both are used
  from the event-loop thread only.
- Anything a peer can get wrong (short or oversized length, unknown version byte, malformed
  msgpack, unknown tag, wrong field types) raises `FrameError`, never another exception type, so
  a transport can log it and drop the connection.
- Pure: no I/O here. `FrameParser` is a sans-I/O incremental parser fed with received bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import msgspec

from raftkv.codec.forward import ForwardBatch, ForwardReplies
from raftkv.raft.messages import AnyMessage
from raftkv.raft.types import Index, NodeId, Term

WIRE_VERSION = 1
"""Version of the frame payload format (the byte in front of every payload)."""

PROTOCOL_VERSION = 1
"""Version of the peer protocol (frame meanings and order), announced in `Hello`."""

MAX_FRAME_BYTES = 64 << 20
"""Default limit on one peer frame's payload; an entry (hence a value) must fit in one."""

_LEN = struct.Struct(">I")
LENGTH_PREFIX_BYTES = _LEN.size
_VERSION_BYTE = bytes([WIRE_VERSION])
_HEADER_PLACEHOLDER = b"\x00\x00\x00\x00" + _VERSION_BYTE


class FrameError(Exception):
    """Bytes from a peer that are not a valid frame; the connection should be dropped."""


class Hello(msgspec.Struct, frozen=True, array_like=True, tag=True, gc=False):
    """First frame on every connection, sent by the connecting side.

    `format_version` and `command_set` are the highest data format and command-set version the
    sender understands (`raftkv.runtime.features`); appended fields, so a Hello of an older node
    (which has neither) decodes with 1 and 1, and an older node ignores them. `forwarding`
    (appended later, the same way; 0 from an older node) is the version of the forward frames
    (`codec/forward.py`) the sender accepts; 0: none, forward to it over HTTP."""

    protocol_version: int
    cluster_name: str
    node_id: NodeId
    format_version: int = 1
    command_set: int = 1
    forwarding: int = 0


class SnapshotChunk(msgspec.Struct, frozen=True, array_like=True, tag=True, gc=False):
    """One piece of a snapshot file being streamed ahead of its `InstallSnapshot`.

    A transfer is the chunks with offsets 0, len0, len0+len1, ... up to `total_size`, for the
    snapshot at (`index`, `term`); the `InstallSnapshot` with empty data that follows completes it.
    """

    index: Index
    term: Term
    offset: int
    total_size: int
    data: bytes


class Ping(msgspec.Struct, frozen=True, array_like=True, tag=True, gc=False):
    """Keepalive on an outbound connection that has been idle for a heartbeat interval: the
    acceptor drops a connection silent for several intervals (half-open after a peer's host
    died), and a peer restarted meanwhile can then connect again."""


class SnapshotRejected(msgspec.Struct, frozen=True, array_like=True, tag=True, gc=False):
    """A follower tells the sender that the snapshot at (`index`, `term`) it received failed
    verification (`reason`) and was discarded: the sender re-verifies its own file and rebuilds
    it if that is bad (runtime/snapshots.py). Sent only to peers that advertised data format
    `SNAPSHOT_REJECTED_SINCE_FORMAT` or newer: an older node would drop the connection on an
    unknown frame."""

    index: Index
    term: Term
    reason: str


SNAPSHOT_REJECTED_SINCE_FORMAT = 4
"""The first data format whose code knows `SnapshotRejected` (storage/format.py)."""

WireMessage = (
    AnyMessage | Hello | SnapshotChunk | Ping | SnapshotRejected | ForwardBatch | ForwardReplies
)

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[WireMessage] = msgspec.msgpack.Decoder(WireMessage)


def append_frame(buf: bytearray, msg: WireMessage) -> int:
    """Append `msg` as one frame to `buf`; returns the payload length (without the prefix)."""
    start = len(buf)
    buf += _HEADER_PLACEHOLDER
    _encoder.encode_into(msg, buf, -1)
    length = len(buf) - start - LENGTH_PREFIX_BYTES
    _LEN.pack_into(buf, start, length)
    return length


def encode_frame(msg: WireMessage) -> bytes:
    """One frame as bytes."""
    buf = bytearray()
    append_frame(buf, msg)
    return bytes(buf)


def encode_frames(msgs: Iterable[WireMessage]) -> bytes:
    """Several frames back to back (one write's worth)."""
    buf = bytearray()
    for msg in msgs:
        append_frame(buf, msg)
    return bytes(buf)


def frame_length(prefix: bytes | bytearray | memoryview, max_frame_bytes: int) -> int:
    """The payload length a 4-byte prefix announces; raises `FrameError` if out of bounds."""
    (length,) = _LEN.unpack_from(prefix)
    if length == 0:
        raise FrameError("zero-length frame")
    if length > max_frame_bytes:
        raise FrameError(f"frame of {length} bytes exceeds the limit of {max_frame_bytes}")
    return int(length)


def decode_payload(payload: bytes | bytearray | memoryview) -> WireMessage:
    """Decode one frame payload (version byte + msgpack); raises `FrameError`."""
    if len(payload) < 1:
        raise FrameError("empty frame payload")
    if payload[0] != WIRE_VERSION:
        raise FrameError(f"unsupported wire version {payload[0]} (expected {WIRE_VERSION})")
    try:
        return _decoder.decode(payload[1:])
    except msgspec.ValidationError as exc:
        raise FrameError(f"invalid message: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise FrameError(f"malformed payload: {exc}") from exc


class FrameParser:
    """Incremental frame parser: `feed` received bytes, get the complete messages back.

    The length prefix is checked against `max_frame_bytes` as soon as it arrives, so an oversized
    frame is refused before its body is buffered. After a `FrameError` the stream is out of sync
    and the parser must not be fed again.
    """

    __slots__ = ("_buf", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int) -> None:
        self._buf = bytearray()
        # The limit for the frames not yet parsed: a transport raises it after the handshake
        # (a Hello is held to a smaller one than the frames behind it).
        self.max_frame_bytes = max_frame_bytes

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def feed(
        self, data: bytes | bytearray | memoryview, max_frames: int | None = None
    ) -> list[WireMessage]:
        """The complete frames received so far (at most `max_frames`: the rest stay buffered,
        unchecked, for the next `feed`, which may pass b"")."""
        buf = self._buf
        buf += data
        out: list[WireMessage] = []
        pos = 0
        end_of_data = len(buf)
        left = -1 if max_frames is None else max_frames
        # The memoryview must be released before the bytearray is resized below.
        with memoryview(buf) as view:
            while left != 0 and end_of_data - pos >= LENGTH_PREFIX_BYTES:
                left -= 1
                length = frame_length(view[pos : pos + LENGTH_PREFIX_BYTES], self.max_frame_bytes)
                frame_end = pos + LENGTH_PREFIX_BYTES + length
                if frame_end > end_of_data:
                    break
                out.append(decode_payload(view[pos + LENGTH_PREFIX_BYTES : frame_end]))
                pos = frame_end
        if pos:
            del buf[:pos]
        return out
