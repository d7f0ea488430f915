"""The LMDB layout answers exactly like the pure DictState, for random command sequences.

Both backends apply the same entries in random batches; then every read the API can make
(current and historical ranges at every uncompacted revision, single keys) must agree, results
included, and a snapshot of either installs into the other with the same answers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftkv.codec.commands import encode_command
from raftkv.kv.commands import (
    Command,
    Compact,
    Compare,
    CompareOp,
    Delete,
    DeleteOp,
    DeleteRange,
    GetOp,
    KeyValue,
    Put,
    PutOp,
    Target,
    Txn,
)
from raftkv.kv.mvcc import MVCCStore
from raftkv.raft.types import Entry, EntryKind, Index, Term
from raftkv.storage import mvcc_lmdb
from raftkv.storage.memory import MemoryState
from raftkv.storage.state import StateMachine
from raftkv.storage.state_lmdb import LmdbState

KEYS = ["a", "a/1", "a/2", "b", "", "ü", "x" * 600, "x" * 600 + "y"]
keys = st.sampled_from(KEYS)
values = st.one_of(st.sampled_from(["", "v", "w"]), st.binary(max_size=4))
ops = st.one_of(
    st.builds(GetOp, keys, st.booleans()),
    st.builds(PutOp, keys, values),
    st.builds(DeleteOp, keys.filter(bool), st.booleans()),
)
compares = st.builds(
    Compare,
    keys,
    st.sampled_from([Target.VERSION, Target.MOD_REVISION, Target.CREATE_REVISION]),
    st.sampled_from(list(CompareOp)),
    st.integers(0, 12),
)
commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(Put, keys, values),
    st.builds(Put, keys, values),
    st.builds(Delete, keys),
    st.builds(DeleteRange, st.sampled_from(["a", "x", "ü"])),
    st.builds(
        Txn, st.lists(compares, max_size=2), st.lists(ops, max_size=3), st.lists(ops, max_size=3)
    ),
    st.builds(Compact, st.integers(1, 40)),
)


def view(store: MVCCStore) -> list[object]:
    out: list[object] = [store.revision(), store.compact_revision()]
    out.append(list(store.range("", None, "", None, None)))
    out.append(list(store.range("a", "b", "", None, "a")))
    for rev in range(store.compact_revision(), store.revision() + 1):
        out.append(list(store.range("", None, "", rev, None)))
        out.append([store.get_at(k, rev) for k in KEYS])
    out.append([store.get(k) for k in KEYS])
    return out


def entries(cmds: list[Command]) -> list[Entry]:
    return [
        Entry(Term(1), Index(i), EntryKind.NORMAL, encode_command(c)) for i, c in enumerate(cmds, 1)
    ]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cmds=st.lists(commands, min_size=1, max_size=30), cut=st.integers(1, 8))
def test_lmdb_and_dict_agree(
    tmp_path_factory: pytest.TempPathFactory, cmds: list[Command], cut: int
) -> None:
    tmp: Path = tmp_path_factory.mktemp("eq")
    lm = LmdbState.open(tmp / "lmdb")
    mem = MemoryState()
    try:
        es = entries(cmds)
        for start in range(0, len(es), cut):
            batch = es[start : start + cut]
            assert lm.apply(batch) == mem.apply(batch)
        assert lm.read(view) == mem.read(view)
        for src, dst in ((lm, MemoryState()), (mem, LmdbState.open(tmp / "copy"))):
            src.build_snapshot(tmp / "snap")
            dst.install_snapshot(tmp / "snap")
            assert dst.read(view) == mem.read(view)
            dst.close()
    finally:
        lm.close()


def test_lmdb_compaction_in_bounded_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mvcc_lmdb, "COMPACT_STEP_EVENTS", 3)
    lm = LmdbState.open(tmp_path / "s")
    try:
        cmds: list[Command] = [Put(f"k{i % 4}", str(i)) for i in range(40)]
        lm.apply(entries([*cmds, Compact(38)]))
        before = lm.read(lambda s: [s.get_at(f"k{i}", 38) for i in range(4)])
        # Each later apply transaction drops a few more superseded events; answers never change.
        for i in range(42, 80):
            lm.apply([Entry(Term(1), Index(i), EntryKind.NORMAL)])  # a no-op entry
            assert lm.read(lambda s: [s.get_at(f"k{i}", 38) for i in range(4)]) == before
        with lm._env.begin() as txn:
            kept = txn.stat(lm._dbs.hist)["entries"]
        # The last event of each key at or below 38 (one per key) + the two writes above 38.
        assert kept == 6
    finally:
        lm.close()


def _write_layout_1(path: Path) -> None:
    import lmdb

    env = lmdb.open(str(path), max_dbs=2, subdir=True)
    kv, meta = env.open_db(b"kv"), env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"=a", b"1", db=kv)
        txn.put(b"applied", (7).to_bytes(8, "little") + (2).to_bytes(8, "little"), db=meta)
    env.close()


def test_format_2_directory_migrates_to_revisions(tmp_path: Path) -> None:
    from raftkv.storage.format import open_data_dir, read_format, write_format

    _write_layout_1(tmp_path / "state")
    (tmp_path / "snapshots").mkdir()
    write_format(tmp_path, 2)
    outcome = open_data_dir(tmp_path)
    assert outcome.migrated == ("mvcc_layout", "log_keeps_entries")
    assert read_format(tmp_path) == 4
    sm = LmdbState.open(tmp_path / "state")
    try:
        assert sm.get("a") == KeyValue("a", "1", 1, 1, 1)
    finally:
        sm.close()


def test_layout_1_is_migrated_at_open(tmp_path: Path) -> None:
    """A state written before revisions (kv held raw values) opens with every key at rev 1."""
    import lmdb

    env = lmdb.open(str(tmp_path / "s"), max_dbs=2, subdir=True)
    kv, meta = env.open_db(b"kv"), env.open_db(b"meta")
    long_key = ("L" * 500).encode()
    with env.begin(write=True) as txn:
        txn.put(b"=a", b"1", db=kv)
        stored = mvcc_lmdb.store_key(long_key)
        txn.put(stored, len(long_key).to_bytes(4, "little") + long_key + b"long", db=kv)
        txn.put(b"applied", (7).to_bytes(8, "little") + (2).to_bytes(8, "little"), db=meta)
    env.close()
    sm: StateMachine = LmdbState.open(tmp_path / "s")
    try:
        assert sm.applied_index == 7
        assert sm.get("a") == KeyValue("a", "1", 1, 1, 1)
        assert sm.get("L" * 500) == KeyValue("L" * 500, "long", 1, 1, 1)
        assert sm.read(lambda s: s.revision()) == 1
        sm.apply([Entry(Term(2), Index(8), EntryKind.NORMAL, encode_command(Put("a", "2")))])
        assert sm.get("a") == KeyValue("a", "2", 1, 8, 2)
    finally:
        sm.close()
