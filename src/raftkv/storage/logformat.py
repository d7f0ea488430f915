"""The on-disk format of the Raft log (storage/raftlog.py): its SQLite schema, the CRCs of its
rows, and how the compaction point follows from the first stored row and the snapshot record.

Rules: pure functions and constants only, shared by the log itself and the offline reader
(ops/offline.py); a change here is a change of the file format (storage/format.py).
"""

from __future__ import annotations

import struct
import zlib

from raftkv.raft.types import SnapshotMeta

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries (
    idx  INTEGER PRIMARY KEY,   -- the Raft index (rowid alias: ordered, no extra index)
    term INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    data BLOB    NOT NULL,
    crc  INTEGER NOT NULL       -- crc32 over (term, index, kind, data), see entry_crc
)""",
    """CREATE TABLE IF NOT EXISTS state (
    name  TEXT PRIMARY KEY,     -- 'hard_state' | 'snapshot'
    value BLOB    NOT NULL,     -- msgspec msgpack of HardState / SnapshotMeta
    crc   INTEGER NOT NULL      -- crc32 over (name, value)
)""",
)

_ENTRY_HEADER = struct.Struct("<QQB")  # term, index, kind: the fixed part covered by the CRC


def entry_crc(term: int, index: int, kind: int, data: bytes) -> int:
    """The CRC32 stored with an entry: over its header (term, index, kind) then its data."""
    return zlib.crc32(data, zlib.crc32(_ENTRY_HEADER.pack(term, index, kind)))


def state_crc(name: str, value: bytes) -> int:
    return zlib.crc32(value, zlib.crc32(name.encode()))


def log_base(first: tuple[int, int] | None, snap: SnapshotMeta | None) -> tuple[int, int]:
    """The log's compaction point (index, term) given its first stored row (index, term) and
    snapshot record (storage/raftlog.py's rules); also used by the offline reader."""
    start = (int(snap.index), int(snap.term)) if snap is not None else (0, 0)
    if first is None or first[0] == start[0] + 1:
        return start  # nothing stored, or nothing kept behind the snapshot
    if first[0] == 1:
        return (0, 0)  # nothing was ever compacted
    if snap is not None and first[0] <= snap.index:
        return first  # kept behind the snapshot: the first row is the compaction point
    return start  # entries missing at the head: DurableLog refuses such a log
