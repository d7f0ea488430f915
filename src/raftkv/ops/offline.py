"""Reading a node's Raft log from its data directory, without the node (`inspect raft --data-dir`).

Rules:
- The SQLite file is opened READ-ONLY (`mode=ro` URI; `immutable` when no WAL file exists, so
  not even -wal/-shm files appear): inspecting a stopped node must never change its files.
  Nothing is created when the file is missing; that is an error.
- Entries are checked against their stored CRC (`storage.raftlog.entry_crc`) and described by
  the same `describe_entry` the online endpoint uses. A bad CRC is reported on the entry, not
  raised: the point of an offline look is often a damaged log.
- The report has the shape of `GET /debug/log` plus `hard_state` and the source path; the first
  index is computed as the node does (`raftlog.log_base`: with entries kept behind the
  snapshot, the first stored row is the compaction point, not a servable entry).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

import msgspec

from raftkv.raft.types import Entry, EntryKind, HardState, Index, SnapshotMeta, Term
from raftkv.runtime.inspect import describe_entry, list_snapshots
from raftkv.storage.raftlog import entry_crc, log_base


class OfflineError(Exception):
    """The data directory holds no readable Raft log."""


def log_path(data_dir: Path) -> Path:
    """`data_dir` may be the node's directory or the raft.db file itself."""
    return data_dir if data_dir.is_file() else data_dir / "raft.db"


def read_offline(data_dir: Path, start: int | None = None, limit: int = 20) -> dict[str, Any]:
    path = log_path(Path(data_dir))
    if not path.is_file():
        raise OfflineError(f"no Raft log at {path}")
    # A cleanly closed log has no -wal file: open it immutable, or SQLite would create -wal and
    # -shm files beside it even in read-only mode. With a -wal (a running or crashed node) the
    # WAL must be read, which needs the shared-memory index: plain read-only mode.
    wal = Path(f"{path}-wal")
    flags = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(f"file:{path}?{flags}", uri=True)
    except sqlite3.Error as exc:
        raise OfflineError(f"cannot open {path} read-only: {exc}") from exc
    try:
        return _read(conn, path, start, limit)
    except sqlite3.DatabaseError as exc:
        raise OfflineError(f"{path} is unreadable: {exc}") from exc
    finally:
        conn.close()


def _read(conn: sqlite3.Connection, path: Path, start: int | None, limit: int) -> dict[str, Any]:
    hard_state = HardState()
    snapshot: SnapshotMeta | None = None
    for name, value in conn.execute("SELECT name, value FROM state"):
        with contextlib.suppress(msgspec.DecodeError):  # shown as absent rather than crash
            if name == "hard_state":
                hard_state = msgspec.msgpack.decode(value, type=HardState)
            elif name == "snapshot":
                snapshot = msgspec.msgpack.decode(value, type=SnapshotMeta)
    snap_index = int(snapshot.index) if snapshot else 0
    head = conn.execute("SELECT idx, term FROM entries ORDER BY idx LIMIT 1").fetchone()
    # Entries kept behind the snapshot: the first row is the compaction point, as online.
    # (A damaged log missing its head shows where its rows really start.)
    base = log_base((int(head[0]), int(head[1])) if head else None, snapshot)[0]
    first = max(base + 1, int(head[0])) if head else base + 1
    tail = conn.execute("SELECT MAX(idx), COUNT(*) FROM entries WHERE idx >= ?", (first,))
    top, count = tail.fetchone()
    last = int(top) if top is not None else snap_index
    lo = start if start is not None else max(first, last - limit + 1)
    entries: list[dict[str, Any]] = []
    rows = conn.execute(
        "SELECT idx, term, kind, data, crc FROM entries WHERE idx >= ? ORDER BY idx LIMIT ?",
        (lo, limit),
    )
    for idx, term, kind, data, crc in rows:
        entries.append(_entry(int(idx), int(term), int(kind), bytes(data), int(crc)))
    size = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(FileNotFoundError):
            size += os.stat(f"{path}{suffix}").st_size
    snapshots = list_snapshots(path.parent / "snapshots")
    return {
        "source": str(path),
        "first_index": first,
        "last_index": last,
        "entry_count": int(count),
        "snapshot_index": snap_index,
        "snapshot_term": int(snapshot.term) if snapshot else 0,
        "bytes_on_disk": size,
        "hard_state": {
            "term": int(hard_state.term),
            "vote": hard_state.vote,
            "commit": int(hard_state.commit),
        },
        "snapshots": [
            {"file": s.file, "index": s.index, "term": s.term, "bytes": s.bytes} for s in snapshots
        ],
        "entries": entries,
    }


def _entry(idx: int, term: int, kind: int, data: bytes, crc: int) -> dict[str, Any]:
    try:
        entry_kind = EntryKind(kind)
    except ValueError:
        return _bad(idx, term, len(data), f"unknown kind {kind}")
    if entry_crc(term, idx, kind, data) != crc:
        return _bad(idx, term, len(data), "CRC mismatch")
    view = describe_entry(Entry(Term(term), Index(idx), entry_kind, data))
    return {
        "index": view.index,
        "term": view.term,
        "type": view.type,
        "command": view.command,
        "bytes": view.bytes,
    }


def _bad(idx: int, term: int, size: int, why: str) -> dict[str, Any]:
    return {"index": idx, "term": term, "type": "corrupt", "command": {"error": why}, "bytes": size}
