"""Offline data-directory rewrites: restore from a backup, force a new cluster (ops/recovery.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftkv.codec.commands import encode_command
from raftkv.kv.commands import Delete, Put
from raftkv.ops.backup import read_facts, sidecar
from raftkv.ops.recovery import (
    RecoveryError,
    force_new_cluster,
    parse_initial_cluster,
    restore_snapshot,
)
from raftkv.raft.types import ConfState, Entry, HardState, Index, NodeId, SnapshotMeta, Term
from raftkv.runtime.driver import snapshot_path
from raftkv.storage import recovery as startup
from raftkv.storage.format import FORMAT_VERSION, read_format
from raftkv.storage.raftlog import DurableLog
from raftkv.storage.snapshot_file import SnapshotHeader, write_snapshot_file
from raftkv.storage.state_lmdb import LmdbState

A, B, C = NodeId("a"), NodeId("b"), NodeId("c")
OLD = ConfState(voters=(A, B, C))


def backup_file(tmp_path: Path, index: int = 7, term: int = 3) -> Path:
    path = tmp_path / "backup.snap"
    header = SnapshotHeader(Index(index), Term(term), OLD, cluster=b"the old cluster's record")
    write_snapshot_file(path, header, [(b"k1", b"v1"), (b"k2", b"v2")])
    return path


def put(index: int, term: int, key: str, value: str) -> Entry:
    return Entry(Term(term), Index(index), data=encode_command(Put(key, value)))


def _value(sm: LmdbState, key: str) -> str | None:
    kv = sm.get(key)
    return None if kv is None else kv.value


def test_parse_initial_cluster() -> None:
    got = parse_initial_cluster("n1=127.0.0.1:9001, n2=127.0.0.2:9002,")
    assert got == {"n1": "127.0.0.1:9001", "n2": "127.0.0.2:9002"}
    for bad in ("", "n1", "n1=", "=h:1", "n1=h:1,n1=h:2"):
        with pytest.raises(RecoveryError) as info:
            parse_initial_cluster(bad)
        assert info.value.misuse


def test_restore_seeds_a_node_of_the_new_configuration(tmp_path: Path) -> None:
    file = backup_file(tmp_path)
    root = tmp_path / "data"
    done = restore_snapshot(file, root, "x", {"x": "h:1", "y": "h:2"})
    node = root / "x"
    assert (done.index, done.term, done.voters) == (7, 3, ("x", "y"))
    assert read_format(node) == FORMAT_VERSION
    sm = LmdbState.open(node / "state")
    try:
        assert (sm.applied_index, sm.applied_term) == (7, 3)
        assert sm.conf == ConfState(voters=(NodeId("x"), NodeId("y")))
        assert [_value(sm, k) for k in ("k1", "k2")] == ["v1", "v2"]
        assert sm.cluster == b""  # no old addresses: the first start seeds the record
    finally:
        sm.close()
    log = DurableLog.open(node / "raft.db")
    try:
        loaded = log.load()
    finally:
        log.close()
    assert loaded.snapshot == SnapshotMeta(Index(7), Term(3), ConfState(voters=("x", "y")))
    assert loaded.entries == []
    assert loaded.hard_state == HardState(Term(3), None, Index(7))
    # The node's own snapshot file carries the NEW configuration (followers may be sent it).
    facts = read_facts(snapshot_path(node, Term(3), Index(7)))
    assert facts.voters == ["x", "y"] and facts.records >= 2
    assert facts.revision == 1  # a pre-MVCC image: every key installed at revision 1


def test_restore_refuses_a_used_directory_and_bad_files(tmp_path: Path) -> None:
    file = backup_file(tmp_path)
    root = tmp_path / "data"
    (root / "x").mkdir(parents=True)
    (root / "x" / "raft.db").write_bytes(b"someone's log")
    with pytest.raises(RecoveryError, match="not empty") as info:
        restore_snapshot(file, root, "x", {"x": "h:1"})
    assert info.value.misuse
    with pytest.raises(RecoveryError, match="not in --initial-cluster"):
        restore_snapshot(file, root, "z", {"x": "h:1"})

    sidecar(file).write_text("0" * 64 + "  backup.snap\n")
    with pytest.raises(RecoveryError, match="does not match") as info:
        restore_snapshot(file, root, "y", {"y": "h:1"})
    assert not info.value.misuse
    assert not (root / "y").exists()

    sidecar(file).unlink()
    data = bytearray(file.read_bytes())
    data[-3] ^= 0xFF  # inside the trailer frame
    file.write_bytes(bytes(data))
    with pytest.raises(RecoveryError, match="corrupt"):
        restore_snapshot(file, root, "y", {"y": "h:1"})
    assert not (root / "y").exists()


def test_force_new_cluster_applies_the_whole_log_and_keeps_one_voter(tmp_path: Path) -> None:
    node = tmp_path / "a"
    node.mkdir()
    entries = [
        Entry(Term(1), Index(1)),
        put(2, 1, "k1", "v1"),
        put(3, 1, "k2", "v2"),
        put(4, 2, "k3", "v3"),
        Entry(Term(2), Index(5), data=encode_command(Delete("k1"))),
    ]
    log = DurableLog.open(node / "raft.db")
    # The persisted commit index lags (it is saved lazily): entries 4 and 5 are past it.
    log.save(HardState(Term(2), A, Index(3)), entries, None)
    log.close()
    sm = startup.open_state(node)
    sm.apply(entries[:2], conf=OLD)  # applied up to 2
    sm.sync()
    sm.close()
    startup.mark_clean(node)  # a clean stop: the state is kept as it is

    done = force_new_cluster(node, "a")
    assert (done.index, done.term, done.voters) == (5, 2, ("a",))
    assert (done.entries_applied, done.beyond_commit) == (3, 2)

    sm = LmdbState.open(node / "state")
    try:
        assert sm.applied_index == 5 and sm.conf == ConfState(voters=(A,))
        assert [_value(sm, k) for k in ("k1", "k2", "k3")] == [None, "v2", "v3"]
    finally:
        sm.close()
    log = DurableLog.open(node / "raft.db")
    try:
        loaded = log.load()
    finally:
        log.close()
    assert loaded.snapshot == SnapshotMeta(Index(5), Term(2), ConfState(voters=(A,)))
    assert loaded.entries == [] and loaded.hard_state == HardState(Term(2), None, Index(5))
    assert [p.name for p in (node / "snapshots").iterdir()] == [
        snapshot_path(node, Term(2), Index(5)).name
    ]


def test_force_new_cluster_needs_a_log(tmp_path: Path) -> None:
    with pytest.raises(RecoveryError, match="no Raft log") as info:
        force_new_cluster(tmp_path / "nothing", "a")
    assert info.value.misuse


def test_restored_and_recovered_directories_record_the_current_data_format(
    tmp_path: Path,
) -> None:
    from raftkv.storage.format import DataFormatError, write_format

    done = restore_snapshot(backup_file(tmp_path), tmp_path / "data", "x", {"x": "h:1"})
    assert read_format(done.node_dir) == FORMAT_VERSION
    # force_new_cluster checks the format first: a newer directory is never rewritten.
    write_format(done.node_dir, FORMAT_VERSION + 1)
    with pytest.raises(DataFormatError, match="newer raftkv"):
        force_new_cluster(done.node_dir, "x")


def test_rewritten_directories_are_marked_clean_like_a_clean_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """restore and force-new-cluster end as a clean stop does (LMDB synced and closed, then
    `state.clean`): the next start, even after an OS restart (another boot id), keeps the
    state instead of rebuilding it."""
    restored = restore_snapshot(backup_file(tmp_path), tmp_path / "data", "x", {"x": "h:1"})
    forced = force_new_cluster(restored.node_dir, "x")
    for node in (restored.node_dir, forced.node_dir):
        assert (node / "state.clean").exists()
    boot = tmp_path / "boot_id"
    boot.write_text("another-boot\n")
    monkeypatch.setenv(startup.BOOT_ID_ENV, str(boot))
    marker = forced.node_dir / "state" / "kept"
    marker.write_text("")  # a rebuild would delete the whole state directory
    sm = startup.open_state(forced.node_dir)
    try:
        assert (sm.applied_index, sm.applied_term) == (forced.index, forced.term)
        assert marker.exists()
    finally:
        sm.close()
