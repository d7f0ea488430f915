"""The MVCC state as snapshot records, written and read the same way by every backend.

Rules:
- Records (see `raftkv.codec.mvcc`): `LAYOUT_RECORD` first, then the meta counters (revision,
  compact, clock), every kept history event in (rev, sub) order, auth records, remembered
  replies, sessions (LMDB's byte order of its `sess` database: b"a" < b"r" < b"s").
  The live keys are not written: they are the last event of every key, rebuilt on install.
- A snapshot whose first record is not `LAYOUT_RECORD` was written before revisions existed:
  its records are (UTF-8 key, UTF-8 value), and install gives every key create_revision =
  mod_revision = 1, version 1 (as the LMDB layout migration does), so replicas agree.
- The space accounting (`raftkv.kv.quota`) is not in the image: `load_image` ends with the
  sink's `recount_space()`, which rebuilds it exactly from the live keys and the events above
  the compact revision (the quota and alarms record travels with the other records).
- Anything malformed raises `CorruptSnapshotError`; the caller's transaction is then aborted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from raftkv.codec import mvcc as codec
from raftkv.kv.commands import KeyValue, Result
from raftkv.kv.mvcc import DictState
from raftkv.storage.errors import CorruptSnapshotError


class ImageSink(Protocol):
    """What installing an image writes to (`DictState`, `LmdbStore`)."""

    def set_revision(self, rev: int) -> None: ...

    def compact(self, rev: int) -> None: ...

    def set_clock_ms(self, ms: int) -> None: ...

    def load_event(self, rev: int, sub: int, key: str, kv: KeyValue | None) -> None: ...

    def put_session(self, sid: int, ttl_ms: int, last_ms: int, floor: int) -> None: ...

    def put_reply(self, sid: int, seq: int, result: Result) -> None: ...

    def auth_put(self, name: str, record: str) -> None: ...

    def recount_space(self) -> None: ...


def meta_records(revision: int, compact: int, clock: int) -> list[tuple[bytes, bytes]]:
    return [
        codec.LAYOUT_RECORD,
        (codec.META_PREFIX + b"revision", codec.encode_u64(revision)),
        (codec.META_PREFIX + b"compact", codec.encode_u64(compact)),
        (codec.META_PREFIX + b"clock", codec.encode_u64(clock)),
    ]


def dict_image(state: DictState) -> Iterator[tuple[bytes, bytes]]:
    yield from meta_records(state.revision(), state.compact_revision(), state.clock_ms())
    for rev, sub, (key, kv) in state.events():
        yield codec.EVENT_PREFIX + codec.rev_id(rev, sub), codec.encode_event(key, kv)
    for name, record in state.auth_items(""):  # b"a" sorts first in LMDB's `sess` database
        yield codec.AUTH_PREFIX + name.encode(), record.encode()
    for sid, seq, result in state.replies():
        yield codec.REPLY_PREFIX + codec.reply_id(sid, seq), codec.encode_result(result)
    for sid in state.session_ids():
        rec = state.session(sid)
        if rec is not None:
            raw = codec.encode_session(*rec)
            yield codec.SESSION_PREFIX + codec.session_id_bytes(sid), raw


def load_image(records: Iterable[tuple[bytes, bytes]], sink: ImageSink, name: str) -> None:
    """Install `records` into an empty `sink` (see the module rules)."""
    it = iter(records)
    first = next(it, None)
    try:
        if first is None:
            return
        if first != codec.LAYOUT_RECORD:
            _load_legacy(first, it, sink)
        else:
            for kb, vb in it:
                _load_record(kb, vb, sink)
        sink.recount_space()
    except (ValueError, UnicodeDecodeError) as exc:  # MvccDecodeError is a ValueError
        raise CorruptSnapshotError(f"snapshot {name} is corrupt: {exc}") from exc


def _load_legacy(
    first: tuple[bytes, bytes], rest: Iterator[tuple[bytes, bytes]], sink: ImageSink
) -> None:
    sub = 0
    for kb, vb in _chain(first, rest):
        key = kb.decode()
        sink.load_event(1, sub, key, KeyValue(key, vb.decode(), 1, 1, 1))
        sub += 1
    if sub:
        sink.set_revision(1)


def _chain(
    first: tuple[bytes, bytes], rest: Iterator[tuple[bytes, bytes]]
) -> Iterator[tuple[bytes, bytes]]:
    yield first
    yield from rest


def _load_record(kb: bytes, vb: bytes, sink: ImageSink) -> None:
    if kb.startswith(codec.EVENT_PREFIX):
        rev, sub = codec.parse_rev_id(kb[len(codec.EVENT_PREFIX) :])
        event = codec.decode_event(vb)
        sink.load_event(rev, sub, event.key, event.kv)
    elif kb.startswith(codec.META_PREFIX):
        name, n = kb[len(codec.META_PREFIX) :], codec.decode_u64(vb)
        if name == b"revision":
            sink.set_revision(n)
        elif name == b"compact":
            sink.compact(n)
        elif name == b"clock":
            sink.set_clock_ms(n)
        else:
            raise ValueError(f"unknown meta record {name!r}")
    elif kb.startswith(codec.SESSION_PREFIX):
        sid = codec.decode_u64(kb[len(codec.SESSION_PREFIX) :])
        rec = codec.decode_session(vb)
        sink.put_session(sid, rec.ttl_ms, rec.last_ms, rec.floor)
    elif kb.startswith(codec.AUTH_PREFIX):
        sink.auth_put(kb[len(codec.AUTH_PREFIX) :].decode(), vb.decode())
    elif kb.startswith(codec.REPLY_PREFIX):
        sid, seq = codec.parse_reply_id(kb[len(codec.REPLY_PREFIX) :])
        sink.put_reply(sid, seq, codec.decode_result(vb))
    else:
        raise ValueError(f"unknown record {kb[:16]!r}")
