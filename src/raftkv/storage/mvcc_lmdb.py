"""The MVCC key layout in LMDB: the store port (`raftkv.kv.mvcc.MVCCStore`) over a transaction.

Rules:
- Databases (all in the node's one environment, written in the apply transaction):
    kv    stored key -> current `KeyValue` (codec.mvcc.encode_kv): the live keys
    hist  rev id (rev u64 BE, sub u32 BE) -> `HistEvent`: history, in revision order
    idx   stored key -> rev ids of the key's kept events (DUPSORT, sorted): history by key
    sess  b"s" + id -> session record; b"r" + id + seq -> remembered reply;
          b"a" + name -> auth record (raftkv.kv.auth: users, roles, signing key)
    meta  applied, conf (state_lmdb.py), revision, compact, clock, compacted_to, layout;
          space:w + rev u64 BE -> (cumulative written, live) after that revision's writes:
          the space accounting of `raftkv.kv.quota` (additive records, no layout change)
  A watch resumes from revision R by scanning `hist` from rev_id(R, 0).
- Stored keys: LMDB keys are at most 511 bytes, but a client key may be longer (the HTTP layer
  admits 4 KiB). The stored key is b"=" + the UTF-8 key when that is <= 447 bytes (the "="
  makes the empty key storable); a longer key is b"=" + its first 447 bytes + 0xFF +
  blake2b-256 of the whole key. Records carry the whole key, checked on read. Order is UTF-8
  byte order (= code-point order), except that keys longer than 447 bytes sharing their first
  447 bytes come in hash order.
- Compaction: `compact()` only raises the compact revision (what reads obey); `compact_step`
  then drops superseded events in bounded steps, one per apply transaction, from where the last
  step stopped (`compacted_to`), so compacting a long history never stalls the loop.
- Space accounting: a store without it (written before it existed) or whose figures are not
  as of its revision (an older raftkv wrote to it since) is recounted at open
  (`ensure_space`); a snapshot install recounts too. Per-revision figures at or below the
  compact revision, except the last, are pruned with the physical compaction steps.
- Layout 1 (before revisions: kv held the raw UTF-8 value) is migrated in place at open: every
  key becomes create_revision = mod_revision = 1, version 1 — the same on every node whatever
  its applied index, so replicas stay identical. Snapshots of layout 1 install the same way.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import lmdb

from raftkv.codec import mvcc as codec
from raftkv.kv.commands import KeyValue, Result
from raftkv.kv.mvcc import in_range
from raftkv.kv.quota import recount
from raftkv.storage.mvcc_image import meta_records

if TYPE_CHECKING:
    from lmdb import _Database

_PREFIX: Final = b"="
SHORT_MAX: Final = 447  # longest UTF-8 key stored as itself: 1 + 447 bytes
_LONG_MARK: Final = 0xFF
_LONG_LEN: Final = 1 + SHORT_MAX + 1 + 32
_KEYLEN: Final = struct.Struct("<I")
_MAX_SUB: Final = 0xFFFFFFFF
_REVISION: Final = b"revision"
_COMPACT: Final = b"compact"
_CLOCK: Final = b"clock"
_COMPACTED_TO: Final = b"compacted_to"  # rev id where the next compaction step starts
_LAYOUT: Final = b"layout"
_SPACE: Final = b"space"  # an early layout of the accounting (removed when found)
_SPACE_MARK: Final = b"space:w"  # + rev u64 BE -> (cumulative written, live) as of rev
_SPACE_REC: Final = struct.Struct(">QQ")
_PAST_MARKS: Final = _SPACE_MARK + b"\xff" * 9  # sorts after every mark
COMPACT_STEP_EVENTS: Final = 512  # history events examined per apply transaction


def store_key(kb: bytes) -> bytes:
    if len(kb) <= SHORT_MAX:
        return _PREFIX + kb
    digest = hashlib.blake2b(kb, digest_size=32).digest()
    return _PREFIX + kb[:SHORT_MAX] + bytes([_LONG_MARK]) + digest


def _legacy_logical(skey: bytes, stored: bytes) -> tuple[bytes, bytes]:
    """The (key, value) behind a layout-1 record (long keys kept u32 len + key + value)."""
    if not (len(skey) == _LONG_LEN and skey[1 + SHORT_MAX] == _LONG_MARK):
        return skey[1:], stored
    (klen,) = _KEYLEN.unpack_from(stored)
    end = _KEYLEN.size + klen
    return stored[_KEYLEN.size : end], stored[end:]


def _approx_key(skey: bytes) -> str:
    """The key (or, for a long key, its first 447 bytes) behind a stored key: enough to order."""
    return skey[1 : 1 + SHORT_MAX].decode("utf-8", "ignore")


def _past(key: str, end: str | None, prefix: str) -> bool:
    """True once a scan in key order has passed every key of the range."""
    return (end is not None and key >= end) or (key > prefix and not key.startswith(prefix))


@dataclass(frozen=True, slots=True)
class Dbs:
    kv: _Database
    hist: _Database
    idx: _Database
    sess: _Database
    meta: _Database


def open_dbs(env: lmdb.Environment, meta: _Database) -> Dbs:
    return Dbs(
        kv=env.open_db(b"kv"),
        hist=env.open_db(b"hist"),
        idx=env.open_db(b"idx", dupsort=True),
        sess=env.open_db(b"sess"),
        meta=meta,
    )


class LmdbStore:
    """An `MVCCStore` over one LMDB transaction (a read transaction serves the reads only)."""

    __slots__ = ("_counters", "_dbs", "_revision", "_txn")

    def __init__(self, txn: lmdb.Transaction[bytes], dbs: Dbs) -> None:
        self._txn = txn
        self._dbs = dbs
        # The space counters (live, written), once read: likewise every write command updates
        # them through this store, so one lookup per apply batch, not one per write.
        self._counters: tuple[int, int] | None = None
        # The revision counter, once read or written through this store: every write command
        # reads it back (`finish`), and nothing else writes it inside our transaction.
        self._revision: int | None = None

    # -- meta ---------------------------------------------------------------------------------
    def _counter(self, name: bytes) -> int:
        raw = self._txn.get(name, db=self._dbs.meta)
        return 0 if raw is None else codec.decode_u64(raw)

    def _set_counter(self, name: bytes, n: int) -> None:
        self._txn.put(name, codec.encode_u64(n), db=self._dbs.meta)

    def revision(self) -> int:
        if self._revision is None:
            self._revision = self._counter(_REVISION)
        return self._revision

    def set_revision(self, rev: int) -> None:
        self._set_counter(_REVISION, rev)
        self._revision = rev

    def compact_revision(self) -> int:
        return self._counter(_COMPACT)

    def compact(self, rev: int) -> None:
        self._set_counter(_COMPACT, max(rev, self.compact_revision()))

    def clock_ms(self) -> int:
        return self._counter(_CLOCK)

    def set_clock_ms(self, ms: int) -> None:
        self._set_counter(_CLOCK, ms)

    # -- reads --------------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        stored = self._txn.get(store_key(key.encode()), db=self._dbs.kv)
        if stored is None:
            return None
        kv = codec.decode_kv(stored)
        return kv if kv.key == key else None

    def _event_at(self, cur: lmdb.Cursor[bytes], skey: bytes, rev: int) -> codec.HistEvent | None:
        """The key's last event at or below `rev` (cursor on idx)."""
        if not cur.set_key(skey):
            return None
        if cur.set_range_dup(skey, codec.rev_id(rev, _MAX_SUB)):
            if cur.value() != codec.rev_id(rev, _MAX_SUB) and not cur.prev_dup():
                return None
        else:
            cur.set_key(skey)
            cur.last_dup()
        raw = self._txn.get(cur.value(), db=self._dbs.hist)
        return None if raw is None else codec.decode_event(raw)

    def get_at(self, key: str, rev: int) -> KeyValue | None:
        with self._txn.cursor(self._dbs.idx) as cur:
            event = self._event_at(cur, store_key(key.encode()), rev)
        return None if event is None or event.key != key else event.kv

    def range(
        self, start: str, end: str | None, prefix: str, rev: int | None, after: str | None
    ) -> Iterator[KeyValue]:
        lo = max(start, prefix) if after is None else max(start, prefix, after)
        first = store_key(lo.encode())[: 1 + SHORT_MAX]
        db = self._dbs.kv if rev is None else self._dbs.idx
        with self._txn.cursor(db) as cur, self._txn.cursor(self._dbs.idx) as look:
            found = cur.set_range(first)
            while found:
                skey = cur.key()
                if rev is None:
                    kv: KeyValue | None = codec.decode_kv(cur.value())
                    key = kv.key if kv is not None else ""
                else:
                    event = self._event_at(look, skey, rev)
                    kv = None if event is None else event.kv
                    key = _approx_key(skey) if event is None else event.key
                if _past(key, end, prefix):
                    break
                if kv is not None and in_range(key, start, end, prefix, after):
                    yield kv
                found = cur.next_nodup() if rev is not None else cur.next()

    # -- writes -------------------------------------------------------------------------------
    def _event(self, skey: bytes, rev: int, sub: int, key: str, kv: KeyValue | None) -> None:
        rid = codec.rev_id(rev, sub)
        self._txn.put(rid, codec.encode_event(key, kv), db=self._dbs.hist)
        self._txn.put(skey, rid, db=self._dbs.idx)

    def put(self, kv: KeyValue, sub: int) -> None:
        skey = store_key(kv.key.encode())
        self._txn.put(skey, codec.encode_kv(kv), db=self._dbs.kv)
        self._event(skey, kv.mod_revision, sub, kv.key, kv)

    def delete(self, key: str, rev: int, sub: int) -> None:
        skey = store_key(key.encode())
        self._txn.delete(skey, db=self._dbs.kv)
        self._event(skey, rev, sub, key, None)

    def load_event(self, rev: int, sub: int, key: str, kv: KeyValue | None) -> None:
        """Restore one history event (snapshot install: events arrive in ascending order)."""
        skey = store_key(key.encode())
        if kv is None:
            self._txn.delete(skey, db=self._dbs.kv)
        else:
            self._txn.put(skey, codec.encode_kv(kv), db=self._dbs.kv)
        self._event(skey, rev, sub, key, kv)

    # -- space accounting (kv/quota.py) --------------------------------------------------------
    def _mark(self, cur: lmdb.Cursor[bytes]) -> tuple[int, int, int] | None:
        """(rev, written, live) of the mark under `cur`, or None if it is not a (current) one."""
        key, raw = cur.key(), cur.value()
        if not (key.startswith(_SPACE_MARK) and len(key) == len(_SPACE_MARK) + 8):
            return None
        if len(raw) != _SPACE_REC.size:
            return None
        written, live = _SPACE_REC.unpack(raw)
        return codec.decode_u64(key[len(_SPACE_MARK) :]), int(written), int(live)

    def _mark_at(self, cur: lmdb.Cursor[bytes], rev: int | None) -> tuple[int, int, int] | None:
        """The last mark <= `rev` (None: the last of all), positioning `cur` (on meta) on it."""
        target = _PAST_MARKS if rev is None else _SPACE_MARK + codec.encode_u64(rev + 1)
        found = cur.set_range(target)
        if not (cur.prev() if found else cur.last()):
            return None
        return self._mark(cur)

    def space_counters(self) -> tuple[int, int]:
        if self._counters is None:
            with self._txn.cursor(self._dbs.meta) as cur:
                mark = self._mark_at(cur, None)
            self._counters = (0, 0) if mark is None else (mark[2], mark[1])
        return self._counters

    def set_space_counters(self, live: int, written: int, rev: int) -> None:
        # One record per write revision: the last one also holds the current counters.
        key = _SPACE_MARK + codec.encode_u64(rev)
        self._txn.put(key, _SPACE_REC.pack(written, live), db=self._dbs.meta)
        self._counters = (live, written)

    def written_through(self, rev: int) -> int:
        with self._txn.cursor(self._dbs.meta) as cur:
            mark = self._mark_at(cur, rev)
        return 0 if mark is None else mark[1]

    def _drop_marks(self, below: bytes, budget: int) -> None:
        """Delete marks whose key sorts below `below`, at most `budget`."""
        with self._txn.cursor(self._dbs.meta) as cur:
            found = cur.set_range(_SPACE_MARK)
            while found and budget > 0 and cur.key() < below and cur.key().startswith(_SPACE_MARK):
                found = cur.delete()
                budget -= 1

    def _prune_marks(self, budget: int) -> None:
        """Drop figures no compact revision can ask for again (all but the last <= it)."""
        with self._txn.cursor(self._dbs.meta) as cur:
            if self._mark_at(cur, self.compact_revision()) is None:
                return
            keep = cur.key()
        self._drop_marks(keep, budget)

    def recount_space(self) -> None:
        """Rebuild the accounting from the state (kv/quota.py `recount`)."""
        self._drop_marks(_PAST_MARKS, 1 << 62)
        self._counters = None
        self._txn.delete(_SPACE, db=self._dbs.meta)
        start = codec.rev_id(self.compact_revision() + 1, 0)

        def live() -> Iterator[tuple[str, bytes | str]]:
            with self._txn.cursor(self._dbs.kv) as cur:
                for _, raw in cur:
                    kv = codec.decode_kv(raw)
                    yield kv.key, kv.value

        def events() -> Iterator[tuple[int, str, bytes | str | None]]:
            with self._txn.cursor(self._dbs.hist) as cur:
                found = cur.set_range(start)
                while found:
                    rev, _ = codec.parse_rev_id(cur.key())
                    ev = codec.decode_event(cur.value())
                    yield rev, ev.key, None if ev.kv is None else ev.kv.value
                    found = cur.next()

        recount(self, live(), events())

    def ensure_space(self) -> bool:
        """Recount if the accounting is missing or stale (module rules); True if it did."""
        with self._txn.cursor(self._dbs.meta) as cur:
            last = self._mark_at(cur, None)
        if (
            last is not None
            and last[0] == self.revision()
            and self._txn.get(_SPACE, db=self._dbs.meta) is None
        ):
            return False
        self.recount_space()
        return True

    # -- sessions -----------------------------------------------------------------------------
    def session(self, sid: int) -> tuple[int, int, int] | None:
        raw = self._txn.get(b"s" + codec.session_id_bytes(sid), db=self._dbs.sess)
        if raw is None:
            return None
        rec = codec.decode_session(raw)
        return rec.ttl_ms, rec.last_ms, rec.floor

    def put_session(self, sid: int, ttl_ms: int, last_ms: int, floor: int) -> None:
        raw = codec.encode_session(ttl_ms, last_ms, floor)
        self._txn.put(b"s" + codec.session_id_bytes(sid), raw, db=self._dbs.sess)

    def drop_session(self, sid: int) -> None:
        self._txn.delete(b"s" + codec.session_id_bytes(sid), db=self._dbs.sess)
        for seq in self.reply_seqs(sid):
            self.drop_reply(sid, seq)

    def session_ids(self) -> list[int]:
        return [codec.decode_u64(k[1:]) for k, _ in self._scan(b"s")]

    def reply(self, sid: int, seq: int) -> Result | None:
        raw = self._txn.get(b"r" + codec.reply_id(sid, seq), db=self._dbs.sess)
        return None if raw is None else codec.decode_result(raw)

    def put_reply(self, sid: int, seq: int, result: Result) -> None:
        raw = codec.encode_result(result)
        self._txn.put(b"r" + codec.reply_id(sid, seq), raw, db=self._dbs.sess)

    def reply_seqs(self, sid: int) -> list[int]:
        return [
            codec.parse_reply_id(k[1:])[1]
            for k, _ in self._scan(b"r" + codec.session_id_bytes(sid))
        ]

    def drop_reply(self, sid: int, seq: int) -> None:
        self._txn.delete(b"r" + codec.reply_id(sid, seq), db=self._dbs.sess)

    # -- auth ---------------------------------------------------------------------------------
    def auth_get(self, name: str) -> str | None:
        raw = self._txn.get(b"a" + name.encode(), db=self._dbs.sess)
        return None if raw is None else raw.decode()

    def auth_put(self, name: str, record: str) -> None:
        self._txn.put(b"a" + name.encode(), record.encode(), db=self._dbs.sess)

    def auth_delete(self, name: str) -> None:
        self._txn.delete(b"a" + name.encode(), db=self._dbs.sess)

    def auth_items(self, prefix: str) -> list[tuple[str, str]]:
        return [(k[1:].decode(), v.decode()) for k, v in self._scan(b"a" + prefix.encode())]

    def _scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        with self._txn.cursor(self._dbs.sess) as cur:
            found = cur.set_range(prefix)
            while found and cur.key().startswith(prefix):
                out.append((cur.key(), cur.value()))
                found = cur.next()
        return out

    # -- physical compaction ------------------------------------------------------------------
    def compact_step(self, budget: int = COMPACT_STEP_EVENTS) -> None:
        """Drop superseded history below the compact revision, at most `budget` events."""
        c = self.compact_revision()
        raw_to = self._txn.get(_COMPACTED_TO, db=self._dbs.meta)
        pos = raw_to if raw_to is not None else codec.rev_id(0, 0)
        stop = codec.rev_id(c, 0)
        if pos >= stop:
            return
        keep_upto = codec.rev_id(c, _MAX_SUB)
        with self._txn.cursor(self._dbs.hist) as hc, self._txn.cursor(self._dbs.idx) as ic:
            while budget > 0 and hc.set_range(pos) and hc.key() < stop:
                rid = hc.key()
                event = codec.decode_event(hc.value())
                budget -= 1
                skey = store_key(event.key.encode())
                ids = [
                    v
                    for v in (ic.iternext_dup(keys=False) if ic.set_key(skey) else ())
                    if v <= keep_upto
                ]
                if ids:
                    last = ids[-1]
                    drop = ids[:-1]
                    last_raw = self._txn.get(last, db=self._dbs.hist)
                    is_tomb = last_raw is not None and codec.decode_event(last_raw).kv is None
                    if is_tomb and last < stop:
                        drop.append(last)
                    for old in drop:
                        self._txn.delete(old, db=self._dbs.hist)
                        self._txn.delete(skey, old, db=self._dbs.idx)
                        budget -= 1
                rev, sub = codec.parse_rev_id(rid)
                pos = codec.rev_id(rev, sub + 1) if sub < _MAX_SUB else codec.rev_id(rev + 1, 0)
        self._txn.put(_COMPACTED_TO, min(pos, stop), db=self._dbs.meta)
        self._prune_marks(COMPACT_STEP_EVENTS)

    # -- layout -------------------------------------------------------------------------------
    def ensure_layout(self) -> None:
        """Migrate a layout-1 store (see the module rules); no-op when already current."""
        if self._txn.get(_LAYOUT, db=self._dbs.meta) is not None:
            return
        with self._txn.cursor(self._dbs.kv) as cur:
            legacy = [_legacy_logical(k, v) for k, v in cur]
        self._txn.drop(self._dbs.kv, delete=False)
        for sub, (kb, vb) in enumerate(legacy):
            self.put(KeyValue(kb.decode(), vb.decode(), 1, 1, 1), sub)
        if legacy:
            self.set_revision(1)
        self._txn.put(_LAYOUT, b"%d" % codec.LAYOUT_VERSION, db=self._dbs.meta)


def lmdb_image(txn: lmdb.Transaction[bytes], dbs: Dbs) -> Iterator[tuple[bytes, bytes]]:
    """The snapshot records of the state in `txn` (see `raftkv.storage.mvcc_image`)."""
    store = LmdbStore(txn, dbs)
    yield from meta_records(store.revision(), store.compact_revision(), store.clock_ms())
    with txn.cursor(dbs.hist) as cur:
        for rid, raw in cur:
            yield codec.EVENT_PREFIX + rid, raw
    with txn.cursor(dbs.sess) as cur:
        for k, raw in cur:
            prefix = {b"s": codec.SESSION_PREFIX, b"r": codec.REPLY_PREFIX, b"a": codec.AUTH_PREFIX}
            yield prefix[k[:1]] + k[1:], raw


def clear(txn: lmdb.Transaction[bytes], dbs: Dbs) -> None:
    """Empty the MVCC state (before a snapshot install); applied/conf are the caller's."""
    for db in (dbs.kv, dbs.hist, dbs.idx, dbs.sess):
        txn.drop(db, delete=False)
    for name in (_REVISION, _COMPACT, _CLOCK, _COMPACTED_TO, _SPACE):
        txn.delete(name, db=dbs.meta)
    LmdbStore(txn, dbs)._drop_marks(_PAST_MARKS, 1 << 62)
    txn.put(_LAYOUT, b"%d" % codec.LAYOUT_VERSION, db=dbs.meta)
