"""LmdbState and MemoryState against the one state-machine contract, plus LMDB specifics."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raftkv.codec.commands import CommandDecodeError, encode_command
from raftkv.kv.commands import Delete, DeleteResult, Put, PutResult
from raftkv.raft.types import ConfState, Entry, EntryKind, Index, NodeId, Term
from raftkv.storage.errors import ApplyOrderError, CorruptSnapshotError, UndecodableEntryError
from raftkv.storage.memory import MemoryState
from raftkv.storage.state import StateMachine
from raftkv.storage.state_lmdb import LmdbState

CONF = ConfState(voters=(NodeId("n1"), NodeId("n2"), NodeId("n3")))
CONF2 = ConfState(voters=(NodeId("n1"), NodeId("n2")), learners=(NodeId("n4"),))


def put(index: int, key: str, value: str, term: int = 1) -> Entry:
    return Entry(Term(term), Index(index), EntryKind.NORMAL, encode_command(Put(key, value)))


def delete(index: int, key: str, term: int = 1) -> Entry:
    return Entry(Term(term), Index(index), EntryKind.NORMAL, encode_command(Delete(key)))


def value_of(sm: StateMachine, key: str) -> str | bytes | None:
    kv = sm.get(key)
    return None if kv is None else kv.value


def noop(index: int, term: int = 1) -> Entry:
    return Entry(Term(term), Index(index))


Factory = Callable[[], StateMachine]


@pytest.fixture(params=["lmdb", "memory"])
def make_state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """A factory of fresh state machines of one backend; closes all of them at teardown."""
    made: list[StateMachine] = []

    def make() -> StateMachine:
        sm: StateMachine
        if request.param == "lmdb":
            sm = LmdbState.open(tmp_path / f"state{len(made)}")
        else:
            sm = MemoryState()
        made.append(sm)
        return sm

    yield make
    for sm in made:
        sm.close()


@pytest.fixture
def state(make_state: Factory) -> StateMachine:
    return make_state()


def test_apply_results_and_applied_index(state: StateMachine) -> None:
    results = state.apply(
        [put(1, "a", "1"), put(2, "b", "2"), delete(3, "a"), delete(4, "absent"), noop(5, 2)]
    )
    assert results == [
        PutResult(1),
        PutResult(2),
        DeleteResult(existed=True, revision=3),
        DeleteResult(existed=False, revision=3),
        None,
    ]
    assert value_of(state, "a") is None
    assert value_of(state, "b") == "2"
    assert (state.applied_index, state.applied_term) == (5, 2)


def test_conf_change_entry_advances_index_and_conf_is_stored(state: StateMachine) -> None:
    cc = Entry(Term(1), Index(2), EntryKind.CONF_CHANGE, b"opaque to the state machine")
    assert state.apply([put(1, "a", "1"), cc], conf=CONF) == [PutResult(1), None]
    assert state.applied_index == 2
    assert state.conf == CONF
    state.set_conf(CONF2)
    assert state.conf == CONF2
    assert state.applied_index == 2


def test_already_applied_entries_are_skipped(state: StateMachine) -> None:
    state.apply([put(1, "a", "1"), put(2, "a", "2")])
    # A replay after restart overlaps what was applied: 1..2 skipped, 3 applied.
    results = state.apply([put(1, "a", "X"), put(2, "a", "Y"), put(3, "b", "3")])
    assert results == [None, None, PutResult(3)]
    assert value_of(state, "a") == "2"
    assert state.applied_index == 3
    assert state.apply([put(2, "a", "Z")]) == [None]
    assert value_of(state, "a") == "2"


def test_gap_raises_and_changes_nothing(state: StateMachine) -> None:
    state.apply([put(1, "a", "1")])
    with pytest.raises(ApplyOrderError, match="applying entry 3 but the next to apply is 2"):
        state.apply([put(3, "a", "3")])
    with pytest.raises(ApplyOrderError):
        state.apply([put(2, "a", "2"), put(4, "a", "4")])
    assert value_of(state, "a") == "1"
    assert state.applied_index == 1


def test_undecodable_command_aborts_the_whole_batch(state: StateMachine) -> None:
    state.apply([put(1, "a", "1")])
    bad = Entry(Term(1), Index(3), EntryKind.NORMAL, b"\x07garbage")
    with pytest.raises(UndecodableEntryError, match="unsupported command version 7") as info:
        state.apply([put(2, "a", "2"), bad])
    assert (info.value.index, info.value.tag) == (3, None)
    assert isinstance(info.value.__cause__, CommandDecodeError)
    assert value_of(state, "a") == "1"
    assert state.applied_index == 1


def test_unknown_command_kind_stops_naming_index_and_tag(state: StateMachine) -> None:
    # A well-formed command of a kind this node does not know (tag 99, from a newer node).
    future = Entry(Term(1), Index(1), EntryKind.NORMAL, b"\x01\x92\x63\xa1a")
    with pytest.raises(UndecodableEntryError) as info:
        state.apply([future])
    assert (info.value.index, info.value.tag) == (1, 99)
    assert str(info.value).startswith("committed entry 1 cannot be applied: unknown command kind")
    assert "tag 99" in str(info.value)
    assert state.applied_index == 0  # never skipped


def test_keys_edge_cases(state: StateMachine) -> None:
    long_a = "a" * 3000 + "/1"
    long_b = "a" * 3000 + "/2"
    state.apply(
        [put(1, "", "empty key"), put(2, long_a, "A"), put(3, long_b, "B"), put(4, "ü", "")]
    )
    assert value_of(state, "") == "empty key"
    assert value_of(state, long_a) == "A"
    assert value_of(state, long_b) == "B"
    assert value_of(state, "a" * 3000) is None
    assert value_of(state, "ü") == ""
    assert state.apply([delete(5, long_a), delete(6, long_a)]) == [
        DeleteResult(existed=True, revision=5),
        DeleteResult(existed=False, revision=5),
    ]
    assert value_of(state, long_b) == "B"
    assert dict(state.items("a" * 3000)) == {long_b: "B"}
    assert dict(state.items("a" * 3000 + "/1")) == {}


def test_items_prefix_limit_after(state: StateMachine) -> None:
    keys = ["user/1", "user/2", "user/3", "users", "zeta", "alpha"]
    state.apply([put(i + 1, k, k.upper()) for i, k in enumerate(keys)])
    assert [k for k, _ in state.items()] == sorted(keys)
    assert list(state.items("user/")) == [
        ("user/1", "USER/1"),
        ("user/2", "USER/2"),
        ("user/3", "USER/3"),
    ]
    assert [k for k, _ in state.items("user", limit=2)] == ["user/1", "user/2"]
    assert [k for k, _ in state.items("user", after="user/2")] == ["user/3", "users"]
    assert [k for k, _ in state.items(after="user/0", limit=1)] == ["user/1"]
    assert [k for k, _ in state.items("user/", after="a")] == ["user/1", "user/2", "user/3"]
    assert list(state.items("nope")) == []


# -- snapshots ----------------------------------------------------------------------------------


def fill(state: StateMachine, n: int, term: int = 1) -> None:
    base = state.applied_index
    state.apply([put(base + i + 1, f"key/{i:05}", f"value {i} " * 3, term) for i in range(n)])


def test_snapshot_round_trip_10k_keys(make_state: Factory, tmp_path: Path) -> None:
    src = make_state()
    fill(src, 10_000, term=2)
    src.apply([delete(10_001, "key/00007", term=3)], conf=CONF)
    info = src.build_snapshot(tmp_path / "snap")
    assert (info.index, info.term, info.conf) == (10_001, 3, CONF)
    assert info.size == (tmp_path / "snap").stat().st_size

    dst = make_state()
    dst.apply([put(1, "stale", "gone after install")])
    installed = dst.install_snapshot(tmp_path / "snap")
    assert (installed.index, installed.term, installed.conf) == (10_001, 3, CONF)
    assert (dst.applied_index, dst.applied_term, dst.conf) == (10_001, 3, CONF)
    assert value_of(dst, "stale") is None
    assert value_of(dst, "key/00007") is None
    assert value_of(dst, "key/09999") == "value 9999 " * 3
    assert list(dst.items()) == list(src.items())
    assert len(list(dst.items())) == 9_999
    # Applying continues right after the snapshot.
    assert dst.apply([put(10_002, "next", "n", 3)]) == [PutResult(10_002)]


@pytest.mark.parametrize("direction", ["lmdb->memory", "memory->lmdb"])
def test_snapshots_are_portable_between_backends(tmp_path: Path, direction: str) -> None:
    lmdb_state = LmdbState.open(tmp_path / "lmdb")
    memory_state = MemoryState()
    try:
        src, dst = (
            (lmdb_state, memory_state)
            if direction == "lmdb->memory"
            else (memory_state, lmdb_state)
        )
        src.apply([put(1, "a", "1"), put(2, "b" * 600, "long key"), put(3, "", "e")], conf=CONF)
        src.build_snapshot(tmp_path / "snap")
        dst.install_snapshot(tmp_path / "snap")
        assert list(dst.items()) == list(src.items())
        assert (dst.applied_index, dst.conf) == (3, CONF)
    finally:
        lmdb_state.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_corrupt_snapshot_is_refused_and_state_kept(
    make_state: Factory, tmp_path: Path, damage: str
) -> None:
    src = make_state()
    fill(src, 2_000)
    src.build_snapshot(tmp_path / "snap")
    data = bytearray((tmp_path / "snap").read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        del data[-10:]
    else:
        data += b"junk"
    (tmp_path / "snap").write_bytes(bytes(data))

    dst = make_state()
    dst.apply([put(1, "mine", "kept")], conf=CONF2)
    with pytest.raises(CorruptSnapshotError, match=f"snapshot {tmp_path / 'snap'} is corrupt"):
        dst.install_snapshot(tmp_path / "snap")
    assert list(dst.items()) == [("mine", "kept")]
    assert (dst.applied_index, dst.conf) == (1, CONF2)


def test_snapshot_while_applying_is_one_consistent_instant(
    make_state: Factory, tmp_path: Path
) -> None:
    """build_snapshot on a worker thread while this thread applies: the image it writes is
    exactly the state at the index it reports."""
    state = make_state()
    fill(state, 1_000)
    infos = []

    def build() -> None:
        for n in range(5):
            infos.append(state.build_snapshot(tmp_path / f"snap{n}"))

    worker = threading.Thread(target=build)
    worker.start()
    index = state.applied_index
    while worker.is_alive() or index < 1_500:
        # Entry i sets counter=i and adds key/i: the pair must agree in every image.
        state.apply([put(index + 1, "counter", str(index + 1)), put(index + 2, f"k{index}", "x")])
        index += 2
    worker.join()
    assert len(infos) == 5
    for info in infos:
        check = MemoryState()
        assert info.path is not None
        check.install_snapshot(info.path)
        assert check.applied_index == info.index
        if info.index > 1_000:
            assert value_of(check, "counter") == str(info.index - 1)
            assert value_of(check, f"k{info.index - 2}") == "x"
            assert value_of(check, f"k{info.index}") is None


def test_memory_snapshot_bytes_round_trip() -> None:
    src = MemoryState()
    src.apply([put(1, "a", "1"), put(2, "b", "2")], conf=CONF)
    info, data = src.build_snapshot_bytes()
    assert (info.index, info.path, info.size) == (2, None, len(data))
    dst = MemoryState()
    assert dst.install_snapshot_bytes(data).index == 2
    assert list(dst.items()) == [("a", "1"), ("b", "2")]
    with pytest.raises(CorruptSnapshotError, match="<bytes>"):
        dst.install_snapshot_bytes(data[:-3])


# -- LMDB specifics -----------------------------------------------------------------------------


def test_lmdb_applied_index_conf_and_data_survive_reopen(tmp_path: Path) -> None:
    state = LmdbState.open(tmp_path / "s")
    state.apply([put(1, "a", "1"), noop(2, 4)], conf=CONF)
    state.sync()
    state.close()
    state = LmdbState.open(tmp_path / "s")
    try:
        assert (state.applied_index, state.applied_term, state.conf) == (2, 4, CONF)
        assert value_of(state, "a") == "1"
        assert state.apply([put(2, "a", "X"), put(3, "a", "3", 4)]) == [None, PutResult(3)]
    finally:
        state.close()


def test_lmdb_installed_snapshot_survives_reopen(tmp_path: Path) -> None:
    src = MemoryState()
    src.apply([put(1, "a", "1")], conf=CONF)
    src.build_snapshot(tmp_path / "snap")
    state = LmdbState.open(tmp_path / "s")
    state.install_snapshot(tmp_path / "snap")
    state.close()
    state = LmdbState.open(tmp_path / "s")
    try:
        assert (state.applied_index, state.conf, value_of(state, "a")) == (1, CONF, "1")
    finally:
        state.close()
