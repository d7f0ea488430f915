"""DurableLog: round trips, truncation, snapshots, compaction, reopen, corruption, torn WAL."""

from __future__ import annotations

import shutil
import sqlite3
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.raft.errors import InvariantViolation
from raftkv.raft.types import (
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Index,
    NodeId,
    SnapshotMeta,
    Term,
)
from raftkv.storage import raftlog
from raftkv.storage.errors import CorruptLogError, StorageError
from raftkv.storage.raftlog import DurableLog
from raftkv.storage.walcheck import check_wal

CONF = ConfState(voters=(NodeId("n1"), NodeId("n2"), NodeId("n3")))


def ents(lo: int, hi: int, term: int = 1) -> list[Entry]:
    """Entries lo..hi inclusive, each with distinct data."""
    return [
        Entry(Term(term), Index(i), EntryKind.NORMAL, f"t{term}-e{i}".encode())
        for i in range(lo, hi + 1)
    ]


def hs(term: int, commit: int = 0, vote: str | None = None) -> HardState:
    return HardState(Term(term), NodeId(vote) if vote else None, Index(commit))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "node" / "raft.db"


@pytest.fixture
def log(db: Path) -> Iterator[DurableLog]:
    with DurableLog.open(db) as opened:
        yield opened


def reopen(log: DurableLog) -> DurableLog:
    log.close()
    return DurableLog.open(log.path)


def test_fresh_log_is_empty(log: DurableLog) -> None:
    loaded = log.load()
    assert loaded.hard_state == HardState()
    assert loaded.snapshot is None
    assert loaded.entries == []
    stats = log.stats()
    assert (stats.first_index, stats.last_index, stats.entry_count) == (1, 0, 0)


def test_round_trip_survives_reopen(log: DurableLog) -> None:
    batch = [
        *ents(1, 3),
        Entry(Term(1), Index(4), EntryKind.CONF_CHANGE, b"\x00cc"),
        Entry(Term(2), Index(5)),  # a leader's empty no-op
    ]
    log.save(hs(2, commit=3, vote="n2"), batch, None)
    assert log.load().entries == batch
    log = reopen(log)
    loaded = log.load()
    assert loaded.entries == batch
    assert loaded.hard_state == hs(2, commit=3, vote="n2")
    assert log.load().entries == batch  # a second load re-reads and re-verifies
    log.close()


def test_hard_state_alone_and_entries_alone(log: DurableLog) -> None:
    log.save(hs(1), [], None)
    log.save(None, ents(1, 2), None)
    log.save(hs(3, vote="n1"), [], None)
    log = reopen(log)
    loaded = log.load()
    assert loaded.hard_state == hs(3, vote="n1")
    assert [e.index for e in loaded.entries] == [1, 2]
    log.close()


def test_conflicting_entries_truncate_the_suffix(log: DurableLog) -> None:
    log.save(hs(1), ents(1, 10, term=1), None)
    log.save(hs(2), ents(6, 7, term=2), None)  # §5.3: 6.. conflict; 8..10 must go too
    log = reopen(log)
    entries = log.load().entries
    assert [e.index for e in entries] == list(range(1, 8))
    assert [e.term for e in entries] == [1] * 5 + [2] * 2
    assert entries[5].data == b"t2-e6"
    assert log.stats().last_index == 7
    log.close()


def test_gap_is_refused_and_nothing_written(log: DurableLog) -> None:
    log.save(hs(1), ents(1, 3), None)
    with pytest.raises(InvariantViolation, match="gap"):
        log.save(hs(5), ents(5, 6), None)
    with pytest.raises(InvariantViolation, match="contiguous"):
        log.save(None, [*ents(4, 4), *ents(6, 6)], None)
    loaded = log.load()
    assert loaded.hard_state == hs(1)  # the failed save rolled back as a whole
    assert [e.index for e in loaded.entries] == [1, 2, 3]


def test_snapshot_matching_the_log_keeps_the_suffix(log: DurableLog) -> None:
    log.save(hs(1), ents(1, 10), None)
    log.save(None, [], SnapshotMeta(Index(6), Term(1), CONF))
    log = reopen(log)
    loaded = log.load()
    assert loaded.snapshot == SnapshotMeta(Index(6), Term(1), CONF)
    assert [e.index for e in loaded.entries] == [7, 8, 9, 10]
    stats = log.stats()
    assert (stats.first_index, stats.last_index, stats.snapshot_index) == (7, 10, 6)
    log.close()


def test_snapshot_not_matching_the_log_discards_it_all(log: DurableLog) -> None:
    log.save(hs(1), ents(1, 10, term=1), None)
    # A leader's snapshot at 8 from term 2: our entry 8 has term 1, so 9..10 diverge too.
    log.save(hs(2, commit=8), ents(9, 9, term=2), SnapshotMeta(Index(8), Term(2), CONF))
    log = reopen(log)
    loaded = log.load()
    assert loaded.snapshot == SnapshotMeta(Index(8), Term(2), CONF)
    assert [(e.index, e.term) for e in loaded.entries] == [(9, 2)]
    assert loaded.hard_state == hs(2, commit=8)
    log.close()


def test_snapshot_beyond_the_log_and_then_appends(log: DurableLog) -> None:
    log.save(hs(1), ents(1, 3), None)
    log.save(hs(4), [], SnapshotMeta(Index(100), Term(4), CONF))
    assert log.load().entries == []
    with pytest.raises(InvariantViolation, match="gap"):
        log.save(None, ents(102, 102, term=4), None)
    log.save(None, ents(101, 103, term=4), None)
    log = reopen(log)
    assert [e.index for e in log.load().entries] == [101, 102, 103]
    log.close()


def test_entries_covered_by_the_snapshot_are_skipped(log: DurableLog) -> None:
    log.save(hs(1), [], SnapshotMeta(Index(5), Term(1), CONF))
    log.save(None, ents(3, 7), None)  # 3..5 are inside the snapshot
    assert [e.index for e in log.load().entries] == [6, 7]


def test_older_snapshot_is_ignored(log: DurableLog) -> None:
    log.save(hs(1), ents(1, 10), SnapshotMeta(Index(0), Term(0), CONF))
    log.save(None, [], SnapshotMeta(Index(8), Term(1), CONF))
    log.save(None, [], SnapshotMeta(Index(4), Term(1), ConfState()))
    loaded = log.load()
    assert loaded.snapshot == SnapshotMeta(Index(8), Term(1), CONF)
    assert [e.index for e in loaded.entries] == [9, 10]


def test_same_snapshot_recorded_again_keeps_the_log(log: DurableLog) -> None:
    log.save(hs(1), ents(1, 6), SnapshotMeta(Index(2), Term(1), CONF))
    log.save(None, [], SnapshotMeta(Index(2), Term(1), CONF))
    log.save(None, [], SnapshotMeta(Index(0), Term(0), CONF))  # older: ignored
    assert [e.index for e in log.load().entries] == [3, 4, 5, 6]


def test_bootstrap_snapshot_at_zero(log: DurableLog) -> None:
    log.save(hs(0), [], SnapshotMeta(Index(0), Term(0), CONF))
    log.save(None, ents(1, 2), None)
    log = reopen(log)
    loaded = log.load()
    assert loaded.snapshot == SnapshotMeta(Index(0), Term(0), CONF)
    assert [e.index for e in loaded.entries] == [1, 2]
    log.close()


def test_compact_is_bounded_by_the_snapshot(log: DurableLog) -> None:
    log.save(hs(1), ents(1, 10), None)
    with pytest.raises(InvariantViolation, match="passes the snapshot"):
        log.compact(Index(3))
    log.save(None, [], SnapshotMeta(Index(5), Term(1), CONF))
    log.compact(Index(5))
    with pytest.raises(InvariantViolation):
        log.compact(Index(6))
    log = reopen(log)
    assert [e.index for e in log.load().entries] == [6, 7, 8, 9, 10]
    log.close()


def test_snapshot_keeps_entries_behind_it_across_a_reopen(log: DurableLog) -> None:
    """Hole 8: `keep_entries` entries before the snapshot stay on disk (and a restarted node
    can serve them); the row at index - keep is the compaction point."""
    log.save(hs(1), ents(1, 30), None)
    log.save(None, [], SnapshotMeta(Index(25), Term(1), CONF), keep_entries=10)
    for reopened in (False, True):
        log = reopen(log) if reopened else log
        loaded = log.load()
        assert loaded.base == (15, 1)
        assert [e.index for e in loaded.entries] == list(range(16, 31))
        assert loaded.entries == ents(16, 30)
        stats = log.stats()
        assert (stats.first_index, stats.last_index, stats.snapshot_index) == (16, 30, 25)
        assert stats.entry_count == 15
        assert [e.index for e in log.read_entries(Index(1), Index(18))] == [16, 17]
    # The next snapshot moves the kept window; appends and truncation above the snapshot work.
    log.save(None, ents(31, 40), None)
    log.save(None, [], SnapshotMeta(Index(35), Term(1), CONF), keep_entries=10)
    log.save(hs(2), ents(38, 39, term=2), None)
    log = reopen(log)
    loaded = log.load()
    assert loaded.base == (25, 1)
    assert [(e.index, e.term) for e in loaded.entries][-3:] == [(37, 1), (38, 2), (39, 2)]
    assert loaded.entries[0].index == 26
    # keep 0 drops everything the snapshot covers, as before.
    log.save(None, [], SnapshotMeta(Index(38), Term(2), CONF), keep_entries=0)
    loaded = log.load()
    assert loaded.base == (38, 2) and [e.index for e in loaded.entries] == [39]
    log.close()


def test_compaction_is_bounded_per_save_and_safe_at_every_step(
    log: DurableLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording a snapshot makes the rows below its compaction point due; each save deletes at
    most COMPACT_ROWS_PER_SAVE of them (0.27 s of writer-thread time for 99k rows at once).
    At every step the log reopens to a valid one whose kept rows reach the snapshot."""
    monkeypatch.setattr(raftlog, "COMPACT_ROWS_PER_SAVE", 4)
    log.save(hs(1), ents(1, 30), None)
    log.save(None, [], SnapshotMeta(Index(25), Term(1), CONF), keep_entries=10)
    firsts = [log.stats().first_index]
    for i in range(31, 35):
        log.save(hs(1, commit=i), ents(i, i), None)
        firsts.append(log.stats().first_index)
        with DurableLog.open(log.path) as again:  # a crash here: what a restart finds
            loaded = again.load()
            assert loaded.entries == ents(loaded.base[0] + 1, i)
            assert loaded.snapshot is not None and loaded.snapshot.index == 25
    # Rows 1..14 are due (15 is the compaction point): 4 per save, then nothing more.
    assert firsts == [6, 10, 14, 16, 16]
    assert log.load().base == (15, 1)
    # keep 0: everything the snapshot covers goes, in steps too.
    log.save(None, [], SnapshotMeta(Index(33), Term(1), CONF), keep_entries=0)
    firsts = [log.stats().first_index]
    for i in range(35, 39):
        log.save(None, ents(i, i), None)
        firsts.append(log.stats().first_index)
    assert firsts == [20, 24, 28, 32, 34]  # rows 15..33 due, 4 per save
    loaded = reopen(log).load()
    assert loaded.base == (33, 1) and [e.index for e in loaded.entries] == list(range(34, 39))


def test_keep_entries_with_a_short_log_keeps_it_all(log: DurableLog) -> None:
    log.save(hs(1), ents(1, 8), None)
    log.save(None, [], SnapshotMeta(Index(6), Term(1), CONF), keep_entries=100)
    log = reopen(log)
    loaded = log.load()
    assert loaded.base == (0, 0) and loaded.entries == ents(1, 8)
    assert log.stats().first_index == 1
    log.close()


def test_snapshot_not_matching_drops_kept_entries_too(log: DurableLog) -> None:
    log.save(hs(1), ents(1, 10), None)
    log.save(hs(3), [], SnapshotMeta(Index(12), Term(3), CONF), keep_entries=5)
    loaded = log.load()
    assert loaded.base == (12, 3) and loaded.entries == []


def test_compact_drops_kept_entries_up_to_the_snapshot(log: DurableLog) -> None:
    log.save(hs(1), ents(1, 20), None)
    log.save(None, [], SnapshotMeta(Index(15), Term(1), CONF), keep_entries=10)
    log.compact(Index(8))
    assert log.load().base == (8, 1)
    log.compact(Index(15))
    log = reopen(log)
    assert log.load().base == (15, 1) and log.load().entries == ents(16, 20)
    log.close()


def test_kept_entries_not_reaching_the_snapshot_are_refused(log: DurableLog, db: Path) -> None:
    log.save(hs(1), ents(1, 20), None)
    log.save(None, [], SnapshotMeta(Index(15), Term(1), CONF), keep_entries=10)
    log.close()
    raw(db, "DELETE FROM entries WHERE idx >= 12")
    with pytest.raises(CorruptLogError, match="kept behind the snapshot at 15 stop at 11"):
        DurableLog.open(db)


def test_kept_entry_with_another_term_at_the_snapshot_is_refused(log: DurableLog, db: Path) -> None:
    log.save(hs(1), ents(1, 20), None)
    log.save(None, [], SnapshotMeta(Index(15), Term(1), CONF), keep_entries=10)
    log.close()
    raw(db, "DELETE FROM entries WHERE idx > 15")
    e = Entry(Term(2), Index(15), EntryKind.NORMAL, b"x")
    from raftkv.storage.raftlog import entry_crc

    raw(
        db,
        "UPDATE entries SET term = 2, data = ?, crc = ? WHERE idx = 15",
        e.data,
        entry_crc(2, 15, int(e.kind), e.data),
    )
    with pytest.raises(CorruptLogError, match="entry 15: term 2, but the snapshot"):
        DurableLog.open(db)


def test_read_entries_clamps_to_the_log(log: DurableLog) -> None:
    log.save(hs(1), ents(1, 10), SnapshotMeta(Index(3), Term(1), CONF))
    assert [e.index for e in log.read_entries(Index(5), Index(8))] == [5, 6, 7]
    assert [e.index for e in log.read_entries(Index(1), Index(6))] == [4, 5]
    assert [e.index for e in log.read_entries(Index(9), Index(99))] == [9, 10]
    assert log.read_entries(Index(11), Index(20)) == []


def test_stats_counts_bytes(log: DurableLog) -> None:
    log.save(hs(1), ents(1, 50), None)
    stats = log.stats()
    assert stats.entry_count == 50
    assert stats.bytes_on_disk > 50 * len(b"t1-e10")


def test_closed_log_refuses_use(log: DurableLog) -> None:
    log.close()
    log.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        log.save(hs(1), [], None)


def test_writer_thread_and_reader_thread(log: DurableLog) -> None:
    """save() on a writer thread while another thread reads: readers never see half a batch."""
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for b in range(50):
                log.save(hs(1, commit=b * 4), ents(b * 4 + 1, b * 4 + 4), None)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    while thread.is_alive():
        count = log.stats().entry_count
        assert count % 4 == 0
        assert len(log.read_entries(Index(1), Index(count + 1))) == count
    thread.join()
    assert errors == []
    assert log.stats().last_index == 200


# -- corruption ---------------------------------------------------------------------------------


def raw(db: Path, sql: str, *args: object) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(sql, args)
    conn.close()


def test_flipped_byte_in_entry_data_is_refused(log: DurableLog, db: Path) -> None:
    log.save(hs(1), ents(1, 10), None)
    log.close()
    original = bytes(ents(7, 7)[0].data)
    flipped = bytes([original[0] ^ 0x01]) + original[1:]
    raw(db, "UPDATE entries SET data = ? WHERE idx = 7", flipped)
    with pytest.raises(CorruptLogError) as info:
        DurableLog.open(db)
    message = str(info.value)
    assert str(db) in message
    assert "entry 7" in message
    assert "CRC mismatch" in message


def test_changed_term_is_refused(log: DurableLog, db: Path) -> None:
    log.save(hs(1), ents(1, 5), None)
    log.close()
    raw(db, "UPDATE entries SET term = 9 WHERE idx = 3")
    with pytest.raises(CorruptLogError, match="entry 3: CRC mismatch"):
        DurableLog.open(db)


def test_missing_entry_is_refused(log: DurableLog, db: Path) -> None:
    log.save(hs(1), ents(1, 8), None)
    log.close()
    raw(db, "DELETE FROM entries WHERE idx = 5")
    with pytest.raises(CorruptLogError, match="entry 5 is missing"):
        DurableLog.open(db)


def test_missing_head_after_snapshot_is_refused(log: DurableLog, db: Path) -> None:
    log.save(hs(1), ents(1, 8), SnapshotMeta(Index(2), Term(1), CONF))
    log.close()
    raw(db, "DELETE FROM entries WHERE idx = 3")
    with pytest.raises(CorruptLogError, match="entry 3 is missing"):
        DurableLog.open(db)


def test_corrupt_hard_state_is_refused(log: DurableLog, db: Path) -> None:
    log.save(hs(3, commit=1), ents(1, 2), None)
    log.close()
    raw(db, "UPDATE state SET value = ? WHERE name = 'hard_state'", b"\x93\x04\xc0\x01")
    with pytest.raises(CorruptLogError, match="hard_state record: CRC mismatch"):
        DurableLog.open(db)


def test_not_a_database_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CorruptLogError, match="unreadable"):
        DurableLog.open(db)


def test_unknown_schema_version_is_refused(log: DurableLog, db: Path) -> None:
    log.close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(CorruptLogError, match="schema version 7"):
        DurableLog.open(db)


# -- torn WAL tail -----------------------------------------------------------------------------


def crash_image(log: DurableLog, dest: Path) -> Path:
    """Copy what is on disk now (database + WAL, no clean close) to dest: a crash's leftovers."""
    dest.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{log.path}{suffix}", dest / f"raft.db{suffix}")
    return dest / "raft.db"


def write_batches(log: DurableLog, batches: int) -> None:
    for b in range(batches):
        log.save(hs(1, commit=b * 10), ents(b * 10 + 1, b * 10 + 10), None)


def wal_geometry(wal: Path) -> tuple[int, int]:
    """(frame size, frame count) from the WAL header (32 bytes; page size at offset 8)."""
    (page_size,) = struct.unpack(">I", wal.read_bytes()[8:12])
    frame = 24 + page_size
    return frame, (wal.stat().st_size - 32) // frame


def test_torn_last_wal_frame_loses_only_the_last_batch(log: DurableLog, tmp_path: Path) -> None:
    write_batches(log, 5)
    image = crash_image(log, tmp_path / "crash")
    wal = Path(f"{image}-wal")
    frame, frames = wal_geometry(wal)
    assert frames >= 5  # the batches are in the WAL, not yet checkpointed
    with open(wal, "r+b") as f:  # cut the last frame (the last batch's commit) in half
        f.truncate(32 + (frames - 1) * frame + frame // 2)
    with DurableLog.open(image) as recovered:
        loaded = recovered.load()
        assert [e.index for e in loaded.entries] == list(range(1, 41))
        assert loaded.entries == ents(1, 40)
        assert loaded.hard_state == hs(1, commit=30)  # saved with entries 31..40, same txn


def test_any_torn_wal_tail_opens_as_a_consistent_prefix(log: DurableLog, tmp_path: Path) -> None:
    write_batches(log, 6)
    image = crash_image(log, tmp_path / "crash")
    wal_bytes = Path(f"{image}-wal").read_bytes()
    frame, _ = wal_geometry(Path(f"{image}-wal"))
    seen: set[int] = set()
    for n, cut in enumerate(range(32 + frame // 3, len(wal_bytes), frame // 2)):
        trial = tmp_path / f"trial{n}"
        trial.mkdir()
        shutil.copyfile(image, trial / "raft.db")
        (trial / "raft.db-wal").write_bytes(wal_bytes[:cut])
        with DurableLog.open(trial / "raft.db") as recovered:
            loaded = recovered.load()
            last = len(loaded.entries)
            assert last % 10 == 0  # whole batches only
            assert loaded.entries == ents(1, last) if last else loaded.entries == []
            if last:
                assert loaded.hard_state == hs(1, commit=last - 10)
            seen.add(last)
    assert len(seen) >= 3  # the cuts really landed in different batches
    assert max(seen) < 60  # and the final batch, whose commit frame is cut, never survives


# -- mid-WAL damage (storage/walcheck.py) ------------------------------------------------------


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


@pytest.mark.parametrize("where", ["page", "frame header checksum", "salt"])
def test_damage_in_the_middle_of_the_wal_is_refused_with_file_and_offset(
    log: DurableLog, tmp_path: Path, where: str
) -> None:
    write_batches(log, 30)
    image = crash_image(log, tmp_path / "crash")
    wal = Path(f"{image}-wal")
    frame, frames = wal_geometry(wal)
    assert frames >= 30
    victim = frames // 3
    start = 32 + victim * frame
    offset = {"page": start + 24 + 100, "frame header checksum": start + 17, "salt": start + 9}
    flip(wal, offset[where])
    with pytest.raises(CorruptLogError) as info:
        DurableLog.open(image)
    text = str(info.value)
    assert str(wal) in text and f"byte offset {start} " in text


def test_wal_check_truncates_a_torn_tail_and_keeps_every_commit(
    log: DurableLog, tmp_path: Path
) -> None:
    write_batches(log, 5)
    image = crash_image(log, tmp_path / "crash")
    wal = Path(f"{image}-wal")
    frame, frames = wal_geometry(wal)
    flip(wal, 32 + (frames - 1) * frame + 24 + 5)  # damage in the last frame: a torn write
    report = check_wal(wal)
    # The whole last transaction goes (its commit frame is damaged), nothing before it.
    assert report.truncated_bytes % frame == 0 and report.truncated_bytes >= frame
    assert wal.stat().st_size == report.kept_bytes == 32 + frames * frame - report.truncated_bytes
    with DurableLog.open(image) as recovered:
        assert recovered.load().entries == ents(1, 40)


def test_wal_checksum_matches_what_sqlite_wrote(log: DurableLog, tmp_path: Path) -> None:
    write_batches(log, 3)
    image = crash_image(log, tmp_path / "crash")
    report = check_wal(Path(f"{image}-wal"), repair=False)
    assert report.frames == report.valid_frames > 0  # every frame SQLite wrote verifies
    assert report.truncated_bytes == 0
