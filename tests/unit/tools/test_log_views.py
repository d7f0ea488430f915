"""Raw log entries in words, snapshot listings, and the offline (read-only) log reader."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import msgspec
import pytest

from raftkv.codec.commands import encode_command
from raftkv.kv.commands import Delete, Put
from raftkv.ops.offline import OfflineError, read_offline
from raftkv.raft.types import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Index,
    NodeId,
    SnapshotMeta,
    Term,
)
from raftkv.runtime.inspect import describe_entry, list_snapshots
from raftkv.storage.raftlog import DurableLog


def entry(index: int, data: bytes = b"", kind: EntryKind = EntryKind.NORMAL) -> Entry:
    return Entry(Term(2), Index(index), kind, data)


def test_describe_every_entry_type() -> None:
    assert describe_entry(entry(1)).type == "noop"
    put = describe_entry(entry(2, encode_command(Put("k", "v"))))
    assert (put.type, put.command, put.index, put.term) == ("put", {"key": "k", "value": "v"}, 2, 2)
    assert describe_entry(entry(3, encode_command(Delete("k")))).command == {"key": "k"}
    cc = ConfChange(ConfChangeKind.ADD_VOTER, NodeId("node-4"), b"127.0.0.1:9004")
    view = describe_entry(entry(4, msgspec.msgpack.encode(cc), EntryKind.CONF_CHANGE))
    assert view.type == "conf_change"
    assert view.command == {"op": "add_voter", "node_id": "node-4", "context": "127.0.0.1:9004"}


def test_undecodable_data_is_described_not_raised() -> None:
    bad = describe_entry(entry(5, b"\x09garbage"))
    assert bad.type == "undecodable" and "version" in str(bad.command)
    bad_cc = describe_entry(entry(6, b"\xff", EntryKind.CONF_CHANGE))
    assert bad_cc.type == "undecodable"


def test_list_snapshots_parses_names_and_sorts_by_index(tmp_path: Path) -> None:
    (tmp_path / f"snap-{3:016d}-{200:016d}.snap").write_bytes(b"x" * 7)
    (tmp_path / f"snap-{2:016d}-{100:016d}.snap").write_bytes(b"xy")
    (tmp_path / "building.tmp").write_bytes(b"")
    snaps = list_snapshots(tmp_path)
    assert [(s.index, s.term, s.bytes) for s in snaps] == [(100, 2, 2), (200, 3, 7)]
    assert list_snapshots(tmp_path / "missing") == []


def make_log(node_dir: Path) -> None:
    with DurableLog.open(node_dir / "raft.db") as log:
        entries = [entry(1)] + [
            entry(i, encode_command(Put(f"k{i}", f"v{i}"))) for i in range(2, 6)
        ]
        log.save(HardState(Term(2), NodeId("node-1"), Index(5)), entries, None)
        log.save(None, [], SnapshotMeta(Index(2), Term(2), ConfState((NodeId("node-1"),))))


def test_offline_reads_summary_and_entries_without_writing(tmp_path: Path) -> None:
    make_log(tmp_path)
    (tmp_path / "snapshots").mkdir()
    (tmp_path / "snapshots" / f"snap-{2:016d}-{2:016d}.snap").write_bytes(b"s")
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    report = read_offline(tmp_path, start=None, limit=2)
    assert (report["first_index"], report["last_index"]) == (3, 5)
    assert report["entry_count"] == 3 and report["snapshot_index"] == 2
    assert report["hard_state"] == {"term": 2, "vote": "node-1", "commit": 5}
    assert [e["index"] for e in report["entries"]] == [4, 5]  # the last `limit`
    assert report["entries"][0]["command"] == {"key": "k4", "value": "v4"}
    assert report["snapshots"] == [
        {"file": f"snap-{2:016d}-{2:016d}.snap", "index": 2, "term": 2, "bytes": 1}
    ]
    assert report["bytes_on_disk"] > 0
    assert read_offline(tmp_path / "raft.db", start=3, limit=1)["entries"][0]["index"] == 3
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert after == before  # read-only: nothing created or touched


def test_offline_and_online_agree_on_entries_kept_behind_the_snapshot(tmp_path: Path) -> None:
    with DurableLog.open(tmp_path / "raft.db") as log:
        entries = [entry(i, encode_command(Put(f"k{i}", "v"))) for i in range(1, 21)]
        log.save(HardState(Term(2), None, Index(20)), entries, None)
        log.save(None, [], SnapshotMeta(Index(15), Term(2), ConfState()), keep_entries=5)
        stats = log.stats()
    report = read_offline(tmp_path, start=None, limit=100)
    assert (report["first_index"], report["last_index"]) == (11, 20)
    assert (stats.first_index, stats.last_index) == (11, 20)
    assert report["entry_count"] == stats.entry_count == 10
    assert [e["index"] for e in report["entries"]] == list(range(11, 21))


def test_offline_flags_a_bad_crc(tmp_path: Path) -> None:
    make_log(tmp_path)
    conn = sqlite3.connect(tmp_path / "raft.db")
    conn.execute("UPDATE entries SET data = ? WHERE idx = 4", (encode_command(Put("k4", "X")),))
    conn.commit()
    conn.close()
    kinds = {e["index"]: e["type"] for e in read_offline(tmp_path, start=3)["entries"]}
    assert kinds == {3: "put", 4: "corrupt", 5: "put"}


def test_offline_missing_log_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(OfflineError, match="no Raft log"):
        read_offline(tmp_path)
    assert not os.listdir(tmp_path)  # and nothing was created
