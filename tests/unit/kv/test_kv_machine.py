"""The pure apply logic over DictState: revisions, history, compaction, transactions, ranges."""

from __future__ import annotations

from raftkv.kv.commands import (
    Compact,
    CompactResult,
    Compare,
    CompareOp,
    Delete,
    DeleteOp,
    DeleteRange,
    DeleteRangeResult,
    DeleteResult,
    GetOp,
    KeyValue,
    Put,
    PutOp,
    PutResult,
    RangeResult,
    Target,
    Txn,
    TxnResult,
)
from raftkv.kv.machine import apply_command
from raftkv.kv.mvcc import DictState


def test_revisions_versions_and_generations() -> None:
    s = DictState()
    assert apply_command(s, Put("a", "1"), 3) == PutResult(3)
    assert apply_command(s, Put("a", "2"), 5) == PutResult(5)
    assert s.get("a") == KeyValue("a", "2", 3, 5, 2)
    assert s.revision() == 5
    assert apply_command(s, Delete("a"), 6) == DeleteResult(True, 6)
    assert s.get("a") is None
    # A delete of an absent key writes nothing: the revision stays.
    assert apply_command(s, Delete("a"), 7) == DeleteResult(False, 6)
    assert s.revision() == 6
    # A new generation starts at version 1 with a new create_revision.
    apply_command(s, Put("a", b"\x00bin"), 8)
    assert s.get("a") == KeyValue("a", b"\x00bin", 8, 8, 1)


def test_history_reads_the_past() -> None:
    s = DictState()
    apply_command(s, Put("k", "v1"), 2)
    apply_command(s, Put("k", "v2"), 4)
    apply_command(s, Delete("k"), 6)
    apply_command(s, Put("k", "v3"), 9)
    assert s.get_at("k", 1) is None
    assert s.get_at("k", 2) == KeyValue("k", "v1", 2, 2, 1)
    assert s.get_at("k", 3) == KeyValue("k", "v1", 2, 2, 1)
    assert s.get_at("k", 5) == KeyValue("k", "v2", 2, 4, 2)
    assert s.get_at("k", 7) is None
    assert s.get_at("k", 9) == KeyValue("k", "v3", 9, 9, 1)
    apply_command(s, Put("j", "x"), 10)
    assert [kv.key for kv in s.range("", None, "", 5, None)] == ["k"]
    assert [kv.key for kv in s.range("", None, "", 7, None)] == []
    assert [kv.key for kv in s.range("", None, "", None, None)] == ["j", "k"]


def test_compaction_keeps_what_reads_at_or_above_it_see() -> None:
    s = DictState()
    apply_command(s, Put("k", "v1"), 2)
    apply_command(s, Put("k", "v2"), 4)
    apply_command(s, Put("gone", "x"), 5)
    apply_command(s, Delete("gone"), 6)
    apply_command(s, Put("k", "v3"), 9)
    assert apply_command(s, Compact(7), 10) == CompactResult(True, 7, 9)
    assert s.compact_revision() == 7
    assert s.get_at("k", 7) == KeyValue("k", "v2", 2, 4, 2)
    assert s.get_at("k", 9) == KeyValue("k", "v3", 2, 9, 3)
    assert s.get_at("gone", 7) is None
    kept = [(rev, key) for rev, _, (key, _) in s.events()]
    assert kept == [(4, "k"), (9, "k")]
    # Compacting again at or below, or beyond the store's revision, changes nothing.
    assert apply_command(s, Compact(7), 11) == CompactResult(False, 7, 9)
    assert apply_command(s, Compact(10), 11) == CompactResult(False, 7, 9)


def test_txn_compare_branches_and_one_revision() -> None:
    s = DictState()
    apply_command(s, Put("a", "1"), 1)
    ok = Txn(
        [Compare("a", Target.MOD_REVISION, CompareOp.EQ, 1)],
        [PutOp("a", "2"), PutOp("b", "x"), GetOp("", prefix=True)],
        [GetOp("a")],
    )
    result = apply_command(s, ok, 5)
    assert isinstance(result, TxnResult)
    assert (result.succeeded, result.revision) == (True, 5)
    assert result.results[:2] == [PutResult(5), PutResult(5)]
    assert result.results[2] == RangeResult(
        [KeyValue("a", "2", 1, 5, 2), KeyValue("b", "x", 5, 5, 1)]
    )
    # The same compare now fails: the failure branch runs, nothing is written.
    failed = apply_command(s, ok, 6)
    assert failed == TxnResult(False, 5, [RangeResult([KeyValue("a", "2", 1, 5, 2)])])
    assert s.revision() == 5


def test_txn_compare_targets_and_ops() -> None:
    s = DictState()
    apply_command(s, Put("a", "m"), 3)

    def holds(c: Compare) -> bool:
        r = apply_command(s, Txn([c], [], []), 10)
        assert isinstance(r, TxnResult)
        return r.succeeded

    assert holds(Compare("a", Target.VALUE, CompareOp.EQ, "m"))
    assert holds(Compare("a", Target.VALUE, CompareOp.LT, "z"))
    assert not holds(Compare("a", Target.VALUE, CompareOp.GT, "z"))
    assert holds(Compare("a", Target.VALUE, CompareOp.NE, b"m"))  # text vs bytes
    assert not holds(Compare("a", Target.VALUE, CompareOp.EQ, b"m"))
    assert holds(Compare("a", Target.VERSION, CompareOp.EQ, 1))
    assert holds(Compare("a", Target.CREATE_REVISION, CompareOp.GT, 2))
    assert holds(Compare("absent", Target.VERSION, CompareOp.EQ, 0))
    assert holds(Compare("absent", Target.MOD_REVISION, CompareOp.LT, 1))
    assert not holds(Compare("absent", Target.VALUE, CompareOp.NE, "x"))


def test_delete_range_is_one_revision() -> None:
    s = DictState()
    for i, key in enumerate(["p/1", "p/2", "q"], start=1):
        apply_command(s, Put(key, "v"), i)
    assert apply_command(s, DeleteRange("p/"), 7) == DeleteRangeResult(2, 7)
    assert [kv.key for kv in s.range("", None, "", None, None)] == ["q"]
    assert [(rev, sub) for rev, sub, _ in s.events()][-2:] == [(7, 0), (7, 1)]
    assert apply_command(s, DeleteRange("p/"), 8) == DeleteRangeResult(0, 7)
    txn = Txn([], [DeleteOp("q", prefix=True)], [])
    assert apply_command(s, txn, 9) == TxnResult(True, 9, [DeleteRangeResult(1, 9)])


def test_same_commands_same_state_regardless_of_history() -> None:
    one, two = DictState(), DictState()
    for i, cmd in enumerate([Put("x", "1"), Put("y", "2"), Delete("x"), Put("x", "3")], 1):
        apply_command(one, cmd, i)
    copy = one.copy()
    apply_command(one, Put("z", "later"), 10)
    assert copy.get("z") is None
    for i, cmd in enumerate([Put("x", "1"), Put("y", "2"), Delete("x"), Put("x", "3")], 1):
        apply_command(two, cmd, i)
    assert list(copy.items()) == list(two.items())
    assert list(copy.events()) == list(two.events())
