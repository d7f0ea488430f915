"""The space quota and `no_space` alarms in the pure state machine (kv/quota.py): deterministic
accounting, raise/clear thresholds, what is refused while raised, and replay from snapshots."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftkv.codec.commands import encode_command
from raftkv.kv.commands import (
    Command,
    Compact,
    Delete,
    DeleteOp,
    DeleteRange,
    DeleteResult,
    OpenSession,
    Put,
    PutOp,
    PutResult,
    SessionRequest,
    Txn,
    TxnResult,
)
from raftkv.kv.machine import apply_command
from raftkv.kv.mvcc import DictState, MVCCStore
from raftkv.kv.quota import (
    RECORD_OVERHEAD,
    Alarm,
    NoSpace,
    SetQuota,
    SpaceResult,
    record_bytes,
    space,
    usage,
)
from raftkv.raft.types import Entry, EntryKind, Index, Term
from raftkv.storage.memory import MemoryState
from raftkv.storage.state_lmdb import LmdbState


def oracle(state: DictState) -> int:
    """Usage computed from scratch: live records + history events above the compact revision."""
    live = sum(record_bytes(k, kv.value) for k, kv in state.items())
    c = state.compact_revision()
    hist = sum(
        record_bytes(key, None if kv is None else kv.value)
        for rev, _, (key, kv) in state.events()
        if rev > c
    )
    return live + hist


class Applier:
    """Applies commands at consecutive revisions (= Raft indexes) to a DictState."""

    def __init__(self) -> None:
        self.state = DictState()
        self.index = 0

    def __call__(self, cmd: Command) -> object:
        self.index += 1
        return apply_command(self.state, cmd, self.index)

    @property
    def usage(self) -> int:
        return usage(self.state)


def test_record_sizes_count_utf8_bytes() -> None:
    assert record_bytes("k", "v") == RECORD_OVERHEAD + 2
    assert record_bytes("ü", "é") == RECORD_OVERHEAD + 4
    assert record_bytes("k", b"\x00\x01\x02") == RECORD_OVERHEAD + 4
    assert record_bytes("k", None) == RECORD_OVERHEAD + 1


def test_usage_follows_live_data_and_history() -> None:
    a = Applier()
    assert a.usage == 0
    a(Put("k", "x" * 100))
    one = record_bytes("k", "x" * 100)
    assert a.usage == 2 * one  # live + its history event
    a(Put("k", "y" * 10))
    small = record_bytes("k", "y" * 10)
    assert a.usage == small + one + small
    a(Delete("k"))
    assert a.usage == one + small + record_bytes("k", None)
    a(Compact(3))  # every event is at or below 3: history no longer counts
    assert a.usage == 0
    assert a.usage == oracle(a.state)


def test_quota_alarm_raises_at_quota_and_clears_below_90_percent() -> None:
    a = Applier()
    a(SetQuota(1000))
    for i in range(6):
        a(Put(f"k{i}", "v" * 60))  # 2 * 94 bytes each (live + history)
        assert space(a.state).quota_alarm == (a.usage >= 1000)
    assert a.usage == 6 * 188
    assert space(a.state).quota_alarm
    # A new key is refused; nothing changes (no revision, no usage).
    before = (a.usage, a.state.revision())
    refused = a(Put("new", "v"))
    assert isinstance(refused, NoSpace) and refused.alarms == ["quota"]
    assert (a.usage, a.state.revision()) == before
    # Compaction frees the history: 6 * 94 = 564 < 900 clears the alarm.
    a(Compact(a.state.revision()))
    assert a.usage == 564 and not space(a.state).quota_alarm
    assert isinstance(a(Put("new", "v")), PutResult)


def test_hysteresis_keeps_the_alarm_until_below_90_percent() -> None:
    a = Applier()
    a(SetQuota(400))
    a(Put("a", "v" * 84))  # 2 * 117 = 234
    a(Put("b", "v" * 84))  # 468 >= 400: raised
    assert space(a.state).quota_alarm
    a(Compact(a.state.revision()))  # history freed: 234 < 360 clears it
    assert not space(a.state).quota_alarm
    a(Put("c", "v" * 30))  # 234 + 2 * 63 = 360 < 400: not raised
    a(Put("c", "v" * 50))  # live 234+83=317, history +83+63 = 463: raised again
    assert space(a.state).quota_alarm
    a(Delete("c"))  # live 234, history 63+83+33 = 179 -> 413: still >= 360, stays raised
    assert a.usage == 413 and space(a.state).quota_alarm
    a(Compact(a.state.revision()))
    assert a.usage == 234 and not space(a.state).quota_alarm


def test_while_raised_only_growing_writes_are_refused() -> None:
    a = Applier()
    a(Put("k", "v" * 50))
    a(Put("other", "v" * 50))
    assert isinstance(a(Alarm("node-2", True, 123)), SpaceResult)
    assert space(a.state).disk == ("node-2",)
    assert isinstance(a(Put("new", "v")), NoSpace)
    assert isinstance(a(Put("k", "v" * 51)), NoSpace)  # a larger value
    assert isinstance(a(Put("k", "w" * 50)), PutResult)  # same size: allowed
    assert isinstance(a(Put("k", "w")), PutResult)  # smaller: allowed
    res = a(Delete("other"))
    assert isinstance(res, DeleteResult) and res.existed
    assert a.usage == oracle(a.state)


def test_transactions_are_judged_by_their_branch() -> None:
    a = Applier()
    a(Put("k", "w"))  # 34 bytes live
    a(Alarm("node-1", True))
    grow = Txn([], [DeleteOp("k"), PutOp("k2", "v" * 10)], [])  # -34 + 43
    assert isinstance(a(grow), NoSpace)
    shrink = Txn([], [PutOp("k2", "v"), DeleteOp("k")], [])  # +35 - 34 ... grows by 1
    assert isinstance(a(shrink), NoSpace)
    fits = Txn([], [PutOp("k2", "v"), DeleteOp("k"), DeleteOp("k2")], [])
    assert isinstance(a(fits), TxnResult)
    assert a.state.get("k") is None and a(Alarm("node-1", False)) is not None
    assert not space(a.state).alarms()
    assert isinstance(a(grow), TxnResult)


def test_refused_session_write_is_not_remembered() -> None:
    a = Applier()
    opened = a(OpenSession(60_000, 1))
    sid = a.index
    assert opened is not None
    a(Alarm("node-3", True))
    res = a(SessionRequest(sid, 1, 0, 2, Put("k", "v")))
    assert isinstance(res, NoSpace)
    a(Alarm("node-3", False))
    again = a(SessionRequest(sid, 1, 0, 3, Put("k", "v")))  # the same seq, retried
    assert isinstance(again, PutResult)
    assert a.state.get("k") is not None


def test_quota_zero_turns_the_alarm_off() -> None:
    a = Applier()
    a(SetQuota(100))
    a(Put("k", "v" * 100))
    assert space(a.state).quota_alarm
    a(SetQuota(0))
    assert not space(a.state).alarms()
    a(DeleteRange("k"))
    assert a.usage == oracle(a.state)


KEYS = ["a", "a/1", "b", "ü", "x" * 500]
values = st.one_of(st.sampled_from(["", "v", "é" * 30]), st.binary(max_size=40))
commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(Put, st.sampled_from(KEYS), values),
    st.builds(Delete, st.sampled_from(KEYS)),
    st.builds(DeleteRange, st.sampled_from(["a", "x"])),
    st.builds(
        Txn,
        st.just([]),
        st.lists(
            st.one_of(
                st.builds(PutOp, st.sampled_from(KEYS), values),
                st.builds(DeleteOp, st.sampled_from(KEYS), st.booleans()),
            ),
            max_size=3,
        ),
        st.just([]),
    ),
    st.builds(Compact, st.integers(1, 40)),
    st.builds(SetQuota, st.integers(0, 3000)),
    st.builds(Alarm, st.sampled_from(["node-1", "node-2"]), st.booleans()),
)


def _entries(cmds: list[Command]) -> list[Entry]:
    return [
        Entry(Term(1), Index(i), EntryKind.NORMAL, encode_command(c)) for i, c in enumerate(cmds, 1)
    ]


def _figures(store: MVCCStore) -> tuple[int, object]:
    return usage(store), space(store)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cmds=st.lists(commands, min_size=1, max_size=30), cut=st.integers(1, 7))
def test_accounting_is_deterministic_across_backends_and_snapshots(
    tmp_path_factory: pytest.TempPathFactory, cmds: list[Command], cut: int
) -> None:
    tmp: Path = tmp_path_factory.mktemp("quota")
    mem, lm = MemoryState(), LmdbState.open(tmp / "lmdb")
    try:
        es = _entries(cmds)
        for start in range(0, len(es), cut):
            batch = es[start : start + cut]
            assert lm.apply(batch) == mem.apply(batch)
            assert lm.read(_figures) == mem.read(_figures)
        assert mem.read(usage) == mem.read(lambda s: oracle(s))  # type: ignore[arg-type]
        want = mem.read(_figures)
        # Replay from a snapshot (either backend into the other) gives the same figures...
        for src, dst in ((lm, MemoryState()), (mem, LmdbState.open(tmp / "copy"))):
            src.build_snapshot(tmp / "snap")
            dst.install_snapshot(tmp / "snap")
            assert dst.read(_figures) == want
            dst.close()
        # ... and so does an LMDB store whose accounting is recounted at open: here its last
        # per-revision record is gone, as if an older raftkv had written since.
        with lm._env.begin(write=True) as txn:
            marks = [k for k, _ in txn.cursor(db=lm._dbs.meta) if k.startswith(b"space:w")]
            assert marks
            txn.delete(marks[-1], db=lm._dbs.meta)
        lm.close()
        lm = LmdbState.open(tmp / "lmdb")
        assert lm.read(_figures) == want
    finally:
        lm.close()
