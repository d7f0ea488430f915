"""The pure apply logic and DictState."""

from __future__ import annotations

from raftkv.kv.commands import Delete, DeleteResult, Put, PutResult
from raftkv.kv.machine import DictState, apply_command


def test_put_then_get() -> None:
    state = DictState()
    assert apply_command(state, Put("a", "1")) == PutResult()
    assert state.get("a") == "1"
    assert apply_command(state, Put("a", "2")) == PutResult()
    assert state.get("a") == "2"
    assert len(state) == 1


def test_delete_reports_whether_the_key_existed() -> None:
    state = DictState({"a": "1"})
    assert apply_command(state, Delete("a")) == DeleteResult(existed=True)
    assert state.get("a") is None
    assert apply_command(state, Delete("a")) == DeleteResult(existed=False)
    assert apply_command(state, Delete("never")) == DeleteResult(existed=False)
    assert len(state) == 0


def test_empty_string_value_is_a_value_not_absence() -> None:
    state = DictState()
    apply_command(state, Put("k", ""))
    assert state.get("k") == ""
    assert apply_command(state, Delete("k")) == DeleteResult(existed=True)


def test_items_sorted_and_filtered_by_prefix() -> None:
    state = DictState()
    for key in ["b/2", "a", "b/1", "c", "b/10"]:
        apply_command(state, Put(key, key.upper()))
    assert [k for k, _ in state.items()] == ["a", "b/1", "b/10", "b/2", "c"]
    assert list(state.items("b/")) == [("b/1", "B/1"), ("b/10", "B/10"), ("b/2", "B/2")]
    assert list(state.items("zz")) == []


def test_same_commands_same_state_regardless_of_history() -> None:
    one, two = DictState(), DictState()
    for cmd in [Put("x", "1"), Put("y", "2"), Delete("x"), Put("x", "3")]:
        apply_command(one, cmd)
    for cmd in [Put("y", "2"), Put("x", "3")]:
        apply_command(two, cmd)
    assert list(one.items()) == list(two.items())


def test_copy_is_independent() -> None:
    state = DictState({"a": "1"})
    snap = state.copy()
    state.put("a", "2")
    state.put("b", "3")
    assert list(snap.items()) == [("a", "1")]
