"""The durable Raft log and hard state of one node, in SQLite.

Rules:
- One SQLite file in WAL mode with `synchronous=FULL`: a committed transaction is durable when
  `COMMIT` returns (one fsync of the WAL). Every `save()` is ONE transaction, so one fsync covers
  the whole batch: snapshot record, conflict truncation, new entries and hard state together.
  A torn last write is a WAL frame without a valid commit record: SQLite's recovery ignores it,
  so a crash loses at most the last, unacknowledged batch and never leaves half of one.
- Before SQLite opens the file, `walcheck.check_wal` reads the `-wal` file: damage followed by
  a later valid transaction refuses the start (CorruptLogError naming file and byte offset);
  a torn tail (the last, never-acknowledged transaction) is truncated, as SQLite would ignore
  it anyway.
- Every entry row carries a CRC32 over (term, index, kind, data); the hard-state and snapshot
  rows carry one over (name, value). `open()` verifies them all, plus contiguity (the entries
  are exactly snapshot.index+1 .. last) and non-decreasing terms; on any failure it raises
  `CorruptLogError` naming the file, the index and the fault, and the node must not start.
- Invariant kept by every write: entries are contiguous and start at 1, right after the
  recorded snapshot, or at or before it (entries kept behind the snapshot, below). A log that
  starts at or before the snapshot reaches it, with the snapshot's term at its index.
  `save(snapshot=...)` keeps the entries after the snapshot only if the log holds the
  snapshot's own (index, term) (Raft §7: the suffix then matches the leader); otherwise the
  whole log is discarded, as `MemoryStorage.apply_snapshot` does.
- Entries kept behind a snapshot (`raft.snapshot_keep_entries`, `keep_entries` of `save`): a
  snapshot recorded with keep_entries = K > 0 drops only the entries below index - K, so a
  follower lagging by up to K entries is still served by AppendEntries after a restart, as it
  is before one (the in-memory log keeps the same entries). The first stored row is then the
  log's compaction point (`base`): its term answers term(first_index - 1), like the dummy
  entry of `MemoryStorage`, and entries after it are servable. Rows starting at 1 mean nothing
  was compacted (base = (0, 0)); rows starting right after the snapshot mean nothing was kept
  (base = the snapshot's point). `LoadedLog.entries` are the entries after `base`.
- Compaction is bounded work per save: recording a snapshot makes the rows below its
  compaction point due, and each save (that one included) deletes at most
  `COMPACT_ROWS_PER_SAVE` of the oldest, in its own transaction. Dropping 99k rows at once
  held the writer thread (every commit behind it) for 0.27 s. Rows still due are entries kept
  behind the snapshot, which the invariant above allows; after a restart the next snapshot
  makes them due again.
- Threads: `open`/`load` run once at startup; `save`/`compact` run on ONE writer thread (never
  the event loop: COMMIT blocks on fsync); `stats`/`read_entries` may run on any thread (the
  inspector). All of them serialize on one lock around the shared connection
  (`check_same_thread=False`), so a reader never sees a half-done write transaction.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import msgspec

from raftkv.raft.errors import InvariantViolation
from raftkv.raft.types import Entry, EntryKind, HardState, Index, SnapshotMeta, Term
from raftkv.storage.errors import CorruptLogError, StorageError
from raftkv.storage.failure import StorageFailure, classify
from raftkv.storage.fsutil import fsync_dir
from raftkv.storage.logformat import SCHEMA, state_crc
from raftkv.storage.logformat import entry_crc as entry_crc  # re-exported (ops, tests)
from raftkv.storage.logformat import log_base as log_base  # re-exported (ops/offline.py)
from raftkv.storage.walcheck import WalDamage, check_wal

SCHEMA_VERSION = 1
COMPACT_ROWS_PER_SAVE = 1024  # ~2.8 ms of SQLite work here (module rules)

_HARD_STATE = "hard_state"
_SNAPSHOT = "snapshot"

_encoder = msgspec.msgpack.Encoder()
_hs_decoder = msgspec.msgpack.Decoder(HardState)
_snap_decoder = msgspec.msgpack.Decoder(SnapshotMeta)


@dataclass(frozen=True, slots=True)
class LoadedLog:
    """What a node restarts from: hard state, latest snapshot record, and the entries after
    the compaction point `base` (index, term), which is at or before the snapshot's index."""

    hard_state: HardState
    snapshot: SnapshotMeta | None
    entries: list[Entry]
    base: tuple[Index, Term]  # the compaction point: (0, 0) or at most the snapshot's index


@dataclass(frozen=True, slots=True)
class LogStats:
    """Shape of the log: entries first_index..last_index are servable (first_index - 1 is the
    compaction point: <= snapshot_index, lower when entries are kept behind the snapshot); an
    empty log has last_index == first_index - 1 == snapshot_index."""

    first_index: Index
    last_index: Index
    entry_count: int
    snapshot_index: Index
    bytes_on_disk: int  # database file + WAL


class DurableLog:
    """The node's Raft log and hard state on disk. Create with `DurableLog.open(path)`."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self._path = path
        self._conn = conn
        self._lock = threading.Lock()  # one user of the connection at a time
        self._closed = False
        # Cached shape of the log, updated only after a COMMIT succeeds:
        self._snapshot: SnapshotMeta | None = None
        self._hard_state = HardState()
        self._last_index = Index(0)  # last_index >= snapshot index; == it when the log is empty
        self._base = (Index(0), Term(0))  # compaction point: base index <= snapshot index
        self._compact_below = 0  # rows below this index are due for deletion (0: none)
        self._loaded: LoadedLog | None = None  # what open() verified, handed out by load()

    # -- startup ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path) -> DurableLog:
        """Open or create the log at `path`, verifying every record (CorruptLogError if bad)."""
        path = Path(path)
        created_dir = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        if created_dir:
            fsync_dir(path.parent.parent)  # the new directory's own entry must survive a crash
        created = not path.exists()
        wal = Path(f"{path}-wal")
        if wal.exists():
            # Before SQLite's recovery drops everything after a damaged frame (walcheck.py).
            try:
                check_wal(wal)
            except WalDamage as exc:
                raise CorruptLogError(f"raft log WAL {exc}") from exc
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            log = cls(path, conn)
            log._setup(created)
            log._loaded = log._read_all()
        except sqlite3.DatabaseError as exc:  # e.g. "file is not a database", "malformed"
            conn.close()
            if classify(exc, "open").errno_name:  # the disk failed (EIO, ENOSPC): not damage
                raise StorageFailure("open", path, exc) from exc
            raise CorruptLogError(f"raft log {path} is unreadable: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return log

    def _setup(self, created: bool) -> None:
        conn = self._conn
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StorageError(f"raft log {self._path}: cannot enable WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            conn.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA:  # not executescript(): it would COMMIT the BEGIN
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        elif version != SCHEMA_VERSION:
            raise CorruptLogError(
                f"raft log {self._path}: schema version {version}, this build reads "
                f"{SCHEMA_VERSION}"
            )
        if created:
            # The new file's directory entry must survive a crash like its contents do.
            fsync_dir(self._path.parent)

    def _corrupt(self, what: str) -> CorruptLogError:
        return CorruptLogError(f"raft log {self._path} is corrupt: {what}")

    def _read_state(self) -> tuple[HardState, SnapshotMeta | None]:
        hard_state = HardState()
        snapshot: SnapshotMeta | None = None
        for name, value, crc in self._conn.execute("SELECT name, value, crc FROM state"):
            if state_crc(name, value) != crc:
                raise self._corrupt(f"{name} record: CRC mismatch")
            try:
                if name == _HARD_STATE:
                    hard_state = _hs_decoder.decode(value)
                elif name == _SNAPSHOT:
                    snapshot = _snap_decoder.decode(value)
                else:
                    raise self._corrupt(f"unknown state record {name!r}")
            except msgspec.DecodeError as exc:
                raise self._corrupt(f"{name} record: {exc}") from exc
        return hard_state, snapshot

    def _verified(
        self, rows: Iterable[tuple[int, int, int, bytes, int]], expect: int
    ) -> list[Entry]:
        """Entries from `rows` (ordered by index), checked to start at `expect`, contiguous,
        with valid CRCs, kinds and non-decreasing terms."""
        out: list[Entry] = []
        prev_term = 0
        for idx, term, kind, data, crc in rows:
            if idx < expect:
                raise self._corrupt(
                    f"entry {idx} is out of place (expected entry {expect} next: it is covered "
                    "by the snapshot or duplicated)"
                )
            if idx > expect:
                raise self._corrupt(f"entry {expect} is missing (next stored entry is {idx})")
            computed = entry_crc(term, idx, kind, data)
            if computed != crc:
                raise self._corrupt(
                    f"entry {idx}: CRC mismatch (stored {crc:#010x}, computed {computed:#010x})"
                )
            if term < prev_term:
                raise self._corrupt(f"entry {idx}: term {term} below previous entry's {prev_term}")
            try:
                entry_kind = EntryKind(kind)
            except ValueError:
                raise self._corrupt(f"entry {idx}: unknown kind {kind}") from None
            out.append(Entry(Term(term), Index(idx), entry_kind, data))
            prev_term = term
            expect += 1
        return out

    def _first_row(self) -> tuple[int, int] | None:
        row = self._conn.execute("SELECT idx, term FROM entries ORDER BY idx LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def _base_of(self, first: tuple[int, int] | None, snap: SnapshotMeta | None) -> tuple[int, int]:
        """The compaction point (`log_base`), refusing a log with missing head entries."""
        if first is not None and first[0] > 1:
            if snap is None:
                raise self._corrupt(
                    f"entry 1 is missing (the log starts at {first[0]}, no snapshot)"
                )
            if first[0] > snap.index + 1:
                raise self._corrupt(
                    f"entry {snap.index + 1} is missing (the log starts at {first[0]}, after the "
                    f"snapshot at {snap.index})"
                )
        return log_base(first, snap)

    def _read_all(self) -> LoadedLog:
        hard_state, snapshot = self._read_state()
        first = self._first_row()
        base = self._base_of(first, snapshot)
        rows = self._conn.execute("SELECT idx, term, kind, data, crc FROM entries ORDER BY idx")
        stored = self._verified(rows, first[0] if first is not None else base[0] + 1)
        entries = stored[1:] if first is not None and first[0] == base[0] else stored
        if snapshot is not None:
            self._check_snapshot_point(stored, snapshot)
        self._hard_state = hard_state
        self._snapshot = snapshot
        self._base = (Index(base[0]), Term(base[1]))
        self._last_index = stored[-1].index if stored else Index(base[0])
        return LoadedLog(hard_state, snapshot, entries, self._base)

    def _check_snapshot_point(self, stored: list[Entry], snapshot: SnapshotMeta) -> None:
        """Stored entries reaching the snapshot hold its term there; after it, no lower term."""
        if not stored:
            return
        if stored[0].index > snapshot.index:
            if stored[0].term < snapshot.term:
                raise self._corrupt(
                    f"entry {stored[0].index}: term {stored[0].term} below the snapshot's "
                    f"term {snapshot.term}"
                )
            return
        if stored[-1].index < snapshot.index:
            raise self._corrupt(
                f"entries kept behind the snapshot at {snapshot.index} stop at {stored[-1].index}"
            )
        held = stored[snapshot.index - stored[0].index].term
        if held != snapshot.term:
            raise self._corrupt(
                f"entry {snapshot.index}: term {held}, but the snapshot there has term "
                f"{snapshot.term}"
            )

    def load(self) -> LoadedLog:
        """Hard state, latest snapshot record and the entries after it, all verified."""
        with self._lock:
            self._check_open()
            loaded, self._loaded = self._loaded, None  # open() already read it: hand that out once
            return loaded if loaded is not None else self._read_all()

    # -- writer thread ------------------------------------------------------------------------
    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotMeta | None,
        keep_entries: int = 0,
    ) -> None:
        """Persist one Ready's snapshot record, entries and hard state in ONE transaction.

        Entries at or below the snapshot are skipped (already covered); existing entries from
        `entries[0].index` on are replaced (conflict truncation, §5.3). A new snapshot keeps
        the `keep_entries` entries before its index when the log holds them (module rules).
        Durable on return.
        """
        if keep_entries < 0:
            raise InvariantViolation(f"save: keep_entries {keep_entries} < 0")
        for prev, nxt in itertools.pairwise(entries):
            if nxt.index != prev.index + 1:
                raise InvariantViolation(f"save: entries not contiguous at {prev.index}")
        with self._lock:
            self._check_open()
            self._loaded = None  # stale from now on
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                snap = self._snapshot
                last = self._last_index
                base = self._base
                due = self._compact_below
                if snapshot is not None and (snap is None or snapshot.index >= snap.index):
                    last, due = self._record_snapshot(snapshot, last, keep_entries)
                    snap = snapshot
                    found = self._base_of(self._first_row(), snap)
                    base = (Index(found[0]), Term(found[1]))
                floor = snap.index if snap else 0
                todo = [e for e in entries if e.index > floor] if entries else []
                if todo:
                    first = todo[0].index
                    if first > last + 1:
                        raise InvariantViolation(
                            f"save: gap in the log: last index {last}, appending at {first}"
                        )
                    if first <= last:
                        conn.execute("DELETE FROM entries WHERE idx >= ?", (first,))
                    conn.executemany(
                        "INSERT INTO entries (idx, term, kind, data, crc) VALUES (?, ?, ?, ?, ?)",
                        [
                            (
                                e.index,
                                e.term,
                                e.kind,
                                e.data,
                                entry_crc(e.term, e.index, e.kind, e.data),
                            )
                            for e in todo
                        ],
                    )
                    last = todo[-1].index
                if hard_state is not None:
                    self._put_state(_HARD_STATE, _encoder.encode(hard_state))
                if due:
                    base, due = self._compact_step(due, snap)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                    conn.execute("ROLLBACK")
                raise
            self._snapshot = snap
            self._base = base
            self._last_index = last
            if hard_state is not None:
                self._hard_state = hard_state
            self._compact_below = due

    def _compact_step(self, due: int, snap: SnapshotMeta | None) -> tuple[tuple[Index, Term], int]:
        """Delete at most COMPACT_ROWS_PER_SAVE of the rows below `due`, oldest first, inside
        the open transaction; returns the new compaction point and `due` (0 once done)."""
        first = self._first_row()
        if first is not None and first[0] < due:
            upto = min(due, first[0] + COMPACT_ROWS_PER_SAVE)
            self._conn.execute("DELETE FROM entries WHERE idx < ?", (upto,))
            first = self._first_row()
        found = self._base_of(first, snap)
        left = first is not None and first[0] < due
        return (Index(found[0]), Term(found[1])), due if left else 0

    def _record_snapshot(self, snapshot: SnapshotMeta, last: Index, keep: int) -> tuple[Index, int]:
        """Record `snapshot` inside the open transaction; returns the new last index and the
        index below which rows are due for deletion (0: none)."""
        current = self._snapshot
        if current is not None and (current.index, current.term) == (snapshot.index, snapshot.term):
            matches = True  # the same point recorded again (e.g. a repeated bootstrap)
        else:
            row = self._conn.execute("SELECT term FROM entries WHERE idx = ?", (snapshot.index,))
            found = row.fetchone()
            matches = found is not None and found[0] == snapshot.term
        if matches:
            # §7: our log holds the snapshot's last entry, so what follows it still matches,
            # and so does what precedes it (Log Matching, §5.3): up to `keep` entries before
            # it stay, above the row at index - keep (the compaction point).
            # Due from now on, deleted a bounded number per save (module rules).
            due = snapshot.index - keep if keep > 0 else snapshot.index + 1
            new_last = max(last, snapshot.index)
        else:
            # Our log diverges from (or falls short of) the snapshot: none of it can be kept.
            self._conn.execute("DELETE FROM entries")
            due, new_last = 0, snapshot.index
        self._put_state(_SNAPSHOT, _encoder.encode(snapshot))
        return Index(new_last), due

    def _put_state(self, name: str, value: bytes) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO state (name, value, crc) VALUES (?, ?, ?)",
            (name, value, state_crc(name, value)),
        )

    def compact(self, upto: Index) -> None:
        """Make `upto` (at most the recorded snapshot's index) the compaction point: delete the
        entries below it, and the entry itself when `upto` is the snapshot's index (its term is
        the snapshot's). Entries kept behind the snapshot by `save` are dropped this way."""
        with self._lock:
            self._check_open()
            snap = self._snapshot
            floor = snap.index if snap else 0
            if upto > floor:
                raise InvariantViolation(f"compact({upto}) passes the snapshot at {floor}")
            if upto <= self._base[0]:
                return
            self._loaded = None
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                op = "<=" if upto == floor else "<"
                conn.execute(f"DELETE FROM entries WHERE idx {op} ?", (upto,))
                found = self._base_of(self._first_row(), snap)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._base = (Index(found[0]), Term(found[1]))

    # -- any thread ---------------------------------------------------------------------------
    def stats(self) -> LogStats:
        with self._lock:
            self._check_open()
            snap_index = self._snapshot.index if self._snapshot else Index(0)
            size = 0
            for suffix in ("", "-wal"):
                with contextlib.suppress(FileNotFoundError):  # no WAL after a clean close
                    size += os.stat(f"{self._path}{suffix}").st_size
            return LogStats(
                first_index=Index(self._base[0] + 1),
                last_index=self._last_index,
                entry_count=self._last_index - self._base[0],
                snapshot_index=snap_index,
                bytes_on_disk=size,
            )

    def read_entries(self, lo: Index, hi: Index) -> list[Entry]:
        """Stored entries with lo <= index < hi, CRC-checked (for the inspector)."""
        with self._lock:
            self._check_open()
            lo = Index(max(lo, self._base[0] + 1))
            hi = Index(min(hi, self._last_index + 1))
            if lo >= hi:
                return []
            rows = self._conn.execute(
                "SELECT idx, term, kind, data, crc FROM entries WHERE idx >= ? AND idx < ? "
                "ORDER BY idx",
                (lo, hi),
            )
            return self._verified(rows, lo)

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"raft log {self._path} is closed")

    def __enter__(self) -> DurableLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
