"""storage/recovery.py: rebuild after an OS restart, reconcile state and log, refuse clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftkv.codec.commands import encode_command
from raftkv.kv.commands import Put
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
from raftkv.storage import recovery
from raftkv.storage.raftlog import DurableLog
from raftkv.storage.recovery import RecoveryError, snapshot_path

CONF = ConfState(voters=(NodeId("n1"), NodeId("n2"), NodeId("n3")))


def put(index: int, key: str, term: int = 1) -> Entry:
    return Entry(Term(term), Index(index), EntryKind.NORMAL, encode_command(Put(key, "v")))


def state_with(d: Path, entries: list[Entry], boot: str) -> None:
    sm = recovery.open_state(d, boot_id=boot)
    sm.apply(entries, conf=CONF)
    sm.close()


def test_state_kept_after_a_process_crash_and_rebuilt_after_an_os_restart(tmp_path: Path) -> None:
    d = tmp_path / "n"
    recovery.prepare_dirs(d)
    state_with(d, [put(1, "a"), put(2, "b")], boot="boot-1")
    sm = recovery.open_state(d, boot_id="boot-1")  # same boot, no clean stop: process crash
    assert sm.applied_index == 2 and sm.get("a") is not None
    sm.close()
    sm = recovery.open_state(d, boot_id="boot-2")  # another boot, no clean stop: discard
    assert sm.applied_index == 0 and sm.get("a") is None
    sm.close()


def test_clean_stop_survives_an_os_restart(tmp_path: Path) -> None:
    d = tmp_path / "n"
    recovery.prepare_dirs(d)
    state_with(d, [put(1, "a")], boot="boot-1")
    recovery.mark_clean(d)
    sm = recovery.open_state(d, boot_id="boot-2")
    assert sm.applied_index == 1
    sm.close()
    assert not (d / "state.clean").exists()  # consumed: the next unclean restart rebuilds
    sm = recovery.open_state(d, boot_id="boot-3")
    assert sm.applied_index == 0
    sm.close()


def test_prepare_dirs_clears_incoming_and_tmp_files(tmp_path: Path) -> None:
    d = tmp_path / "n"
    recovery.prepare_dirs(d)
    (d / "incoming" / "snapshot-1.snap").write_bytes(b"x" * 100)
    (d / "snapshots" / "building.tmp").write_bytes(b"x")
    keep = d / "snapshots" / "snap-1-1.snap"
    keep.write_bytes(b"x")
    recovery.prepare_dirs(d)
    assert list((d / "incoming").iterdir()) == []
    assert list((d / "snapshots").iterdir()) == [keep]


def setup_log(d: Path, entries: list[Entry]) -> DurableLog:
    recovery.prepare_dirs(d)
    log = DurableLog.open(d / "raft.db")
    log.save(HardState(Term(1), None, Index(0)), entries, None)
    return log


def test_interrupted_install_is_finished_from_the_snapshot_file(tmp_path: Path) -> None:
    d = tmp_path / "n"
    log = setup_log(d, [put(i, f"k{i}") for i in range(1, 6)])  # a divergent tail 1..5 term 1
    # The leader's state at (index 8, term 2), as a snapshot file, installed into LMDB; then
    # the crash came before the log recorded it.
    leader = recovery.open_state(tmp_path / "leader", boot_id="b")
    leader.apply([put(i, f"L{i}", term=2) for i in range(1, 9)], conf=CONF)
    info = leader.build_snapshot(snapshot_path(d, Term(2), Index(8)))
    leader.close()
    sm = recovery.open_state(d, boot_id="b")
    sm.install_snapshot(Path(str(info.path)))
    loaded = recovery.reconcile(d, log, log.load(), sm)
    assert loaded.snapshot is not None
    assert (loaded.snapshot.index, loaded.snapshot.term) == (8, 2)
    assert loaded.entries == []  # the divergent tail is gone (§7)
    sm.close()
    log.close()


def test_state_ahead_of_the_log_is_refused_with_both_positions(tmp_path: Path) -> None:
    d = tmp_path / "n"
    log = setup_log(d, [put(i, f"k{i}") for i in range(1, 4)])
    sm = recovery.open_state(d, boot_id="b")
    sm.apply([put(i, f"k{i}") for i in range(1, 8)], conf=CONF)
    with pytest.raises(RecoveryError, match=r"applied index 7 \(term 1\).*ends at index 3"):
        recovery.reconcile(d, log, log.load(), sm)
    sm.close()
    log.close()


def test_state_term_mismatch_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "n"
    log = setup_log(d, [put(1, "a"), put(2, "b"), put(3, "c", term=3)])
    sm = recovery.open_state(d, boot_id="b")
    sm.apply([put(1, "a"), put(2, "b"), put(3, "c", term=2)], conf=CONF)
    with pytest.raises(RecoveryError, match="holds term 3 at index 3"):
        recovery.reconcile(d, log, log.load(), sm)
    sm.close()
    log.close()


def test_missing_snapshot_file_is_refused_by_name(tmp_path: Path) -> None:
    d = tmp_path / "n"
    log = setup_log(d, [put(1, "a"), put(2, "b")])
    log.save(None, (), SnapshotMeta(Index(2), Term(1), CONF))
    sm = recovery.open_state(d, boot_id="b")
    with pytest.raises(RecoveryError, match=r"snap-0000000000000001-0000000000000002\.snap"):
        recovery.reconcile(d, log, log.load(), sm)
    sm.close()
    log.close()


def test_consistent_state_and_log_pass_unchanged(tmp_path: Path) -> None:
    d = tmp_path / "n"
    log = setup_log(d, [put(1, "a"), put(2, "b"), put(3, "c")])
    sm = recovery.open_state(d, boot_id="b")
    sm.apply([put(1, "a"), put(2, "b")], conf=CONF)
    loaded = log.load()
    assert recovery.reconcile(d, log, loaded, sm) is loaded
    sm.close()
    log.close()
