"""Bytes of the MVCC state: stored records, history events, sessions, and snapshot records.

Rules:
- One encoding for each record, shared by the LMDB layout and the snapshot format, so a backend
  can copy a stored history event into a snapshot without decoding it.
- Revision ids are big-endian (rev u64, sub u32), so byte order is revision order.
- Snapshot records (`SnapshotWriter.add(key, value)`) of the MVCC state all have keys starting
  with 0xFF, a byte that never occurs in UTF-8: a snapshot written before revisions existed
  (keys were UTF-8 user keys) can never be mistaken for one, and vice versa. The first record
  is `LAYOUT_RECORD`; then meta, history events in (rev, sub) order, sessions, replies.
- Decoding raises `MvccDecodeError` (a ValueError) on anything malformed.
"""

from __future__ import annotations

import struct
from typing import Final, TypeVar

import msgspec

from raftkv.kv.commands import KeyValue, Result

LAYOUT_VERSION: Final = 2  # 1: plain key -> UTF-8 value, no revisions
LAYOUT_RECORD: Final = (b"\xffMlayout", b"%d" % LAYOUT_VERSION)
META_PREFIX: Final = b"\xffM"
EVENT_PREFIX: Final = b"\xffH"
SESSION_PREFIX: Final = b"\xffS"
REPLY_PREFIX: Final = b"\xffR"
AUTH_PREFIX: Final = b"\xffA"  # + UTF-8 record name -> UTF-8 record (raftkv.kv.auth)
META_NAMES: Final = (b"revision", b"compact", b"clock")

_REV: Final = struct.Struct(">QI")  # revision, sub
_U64: Final = struct.Struct(">Q")
_SEQ: Final = struct.Struct(">QQ")  # session id, seq


T = TypeVar("T")


class HistEvent(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One history event: `kv` written at its mod_revision, or None (key deleted)."""

    key: str
    kv: KeyValue | None


class SessionRec(msgspec.Struct, frozen=True, array_like=True, gc=False):
    ttl_ms: int
    last_ms: int
    floor: int


class MvccDecodeError(ValueError):
    """Stored or snapshot bytes that are not a record of this layout."""


_enc = msgspec.msgpack.Encoder()
_kv_dec = msgspec.msgpack.Decoder(KeyValue)
_event_dec = msgspec.msgpack.Decoder(HistEvent)
_session_dec = msgspec.msgpack.Decoder(SessionRec)
_result_dec: msgspec.msgpack.Decoder[Result] = msgspec.msgpack.Decoder(Result)


def _decode(dec: msgspec.msgpack.Decoder[T], data: bytes, what: str) -> T:
    try:
        return dec.decode(data)
    except msgspec.DecodeError as exc:
        raise MvccDecodeError(f"malformed {what}: {exc}") from exc


def encode_kv(kv: KeyValue) -> bytes:
    return _enc.encode(kv)


def decode_kv(data: bytes) -> KeyValue:
    return _decode(_kv_dec, data, "key record")


def encode_event(key: str, kv: KeyValue | None) -> bytes:
    return _enc.encode(HistEvent(key, kv))


def decode_event(data: bytes) -> HistEvent:
    return _decode(_event_dec, data, "history event")


def encode_session(ttl_ms: int, last_ms: int, floor: int) -> bytes:
    return _enc.encode(SessionRec(ttl_ms, last_ms, floor))


def decode_session(data: bytes) -> SessionRec:
    return _decode(_session_dec, data, "session record")


def encode_result(result: Result) -> bytes:
    return _enc.encode(result)


def decode_result(data: bytes) -> Result:
    return _decode(_result_dec, data, "session reply")


def rev_id(rev: int, sub: int) -> bytes:
    return _REV.pack(rev, sub)


def parse_rev_id(data: bytes) -> tuple[int, int]:
    if len(data) != _REV.size:
        raise MvccDecodeError(f"revision id of {len(data)} bytes")
    rev, sub = _REV.unpack(data)
    return int(rev), int(sub)


def encode_u64(n: int) -> bytes:
    return _U64.pack(n)


def decode_u64(data: bytes) -> int:
    if len(data) != _U64.size:
        raise MvccDecodeError(f"counter of {len(data)} bytes")
    return int(_U64.unpack(data)[0])


def session_id_bytes(sid: int) -> bytes:
    return _U64.pack(sid)


def reply_id(sid: int, seq: int) -> bytes:
    return _SEQ.pack(sid, seq)


def parse_reply_id(data: bytes) -> tuple[int, int]:
    if len(data) != _SEQ.size:
        raise MvccDecodeError(f"reply id of {len(data)} bytes")
    sid, seq = _SEQ.unpack(data)
    return int(sid), int(seq)
