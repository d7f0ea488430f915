"""History builder and JSON-lines round trip."""

from __future__ import annotations

import msgspec
import pytest

from raftkv.check.history import History, Op, OpKind, Outcome, dumps_jsonl, loads_jsonl
from raftkv.check.linearizability import check_history


def test_builder_records_calls_and_completions() -> None:
    h = History()
    p = h.put("c1", "k", "x", at=0)
    g = h.get(2, "k", at=0.5)
    d = h.delete("c1", "k", at=3)
    lost = h.put("c3", "k", "y", at=4)
    refused = h.put("c3", "k", "z", at=5)
    h.ok(p, at=1)
    h.ok(g, at=2, value="x")
    h.ok(d, at=3.5, existed=True)
    h.unknown(lost)
    h.fail(refused, at=6)
    assert [op.id for op in h] == [p, g, d, lost, refused] == [0, 1, 2, 3, 4]
    ops = {op.id: op for op in h.ops()}
    assert ops[p] == Op(
        id=0, client="c1", kind=OpKind.PUT, key="k", value="x", invoke=0, complete=1,
        outcome=Outcome.OK,
    )  # fmt: skip
    assert ops[g].value == "x" and ops[g].client == 2
    assert ops[d].existed is True and ops[d].complete == 3.5
    assert ops[lost].outcome is Outcome.UNKNOWN and ops[lost].complete is None
    assert ops[refused].outcome is Outcome.FAIL
    assert str(ops[g]) == "#1 2: get('k') -> 'x' [0.5, 2] ok"
    assert str(ops[lost]) == "#3 c3: put('k', 'y') [4, …] unknown"
    assert check_history(h).ok


def test_builder_rejects_misuse() -> None:
    h = History()
    with pytest.raises(ValueError, match="put carries a value"):
        h.invoke("c", OpKind.PUT, "k", at=0)
    with pytest.raises(ValueError, match="put carries a value"):
        h.invoke("c", OpKind.GET, "k", "v", at=0)
    g = h.get("c", "k", at=5)
    with pytest.raises(ValueError, match="before its invoke"):
        h.ok(g, at=4)
    with pytest.raises(ValueError, match="only a delete"):
        h.ok(g, at=6, existed=True)
    p = h.put("c", "k", "v", at=0)
    with pytest.raises(ValueError, match="only a get"):
        h.ok(p, at=1, value="v")
    h.ok(g, at=6)
    with pytest.raises(ValueError, match="already completed"):
        h.fail(g)
    with pytest.raises(KeyError):
        h.ok(99, at=1)


def test_jsonl_round_trip() -> None:
    h = History()
    h.ok(h.put("c1", "k", "x", at=0), at=1)
    h.ok(h.get(7, "k", at=1.25), at=2, value="x")
    h.ok(h.get(7, "absent", at=3), at=4)
    h.ok(h.delete("c1", "k", at=5), at=6, existed=True)
    h.unknown(h.put("c2", "k", "lost", at=7))
    h.fail(h.put("c2", "k", "refused", at=8))
    h.get("c3", "k", at=9)  # never completed: stays UNKNOWN
    data = dumps_jsonl(h)
    assert data.count(b"\n") == len(h) == 7
    loaded = loads_jsonl(data)
    assert loaded == list(h.ops())
    assert loads_jsonl(data.decode() + "\n\n") == loaded
    again = History(loaded)
    assert again.ops() == h.ops()
    assert again.put("c9", "k", "next", at=10) == 7  # ids continue after the loaded ones
    assert check_history(loaded).ok


def test_jsonl_rejects_malformed_lines() -> None:
    with pytest.raises(msgspec.ValidationError):
        loads_jsonl(b'{"id": 1, "client": "c", "kind": "jump", "key": "k", "invoke": 0}\n')


def test_checker_rejects_malformed_ops() -> None:
    ok_get = Op(
        id=0, client="c", kind=OpKind.GET, key="k", invoke=5, complete=4, outcome=Outcome.OK
    )
    with pytest.raises(ValueError, match="does not complete after its invoke"):
        check_history([ok_get])
    with pytest.raises(ValueError, match="does not complete after its invoke"):
        check_history([msgspec.structs.replace(ok_get, complete=None)])
    lost_delete = Op(id=1, client="c", kind=OpKind.DELETE, key="k", invoke=0, existed=False)
    with pytest.raises(ValueError, match="only a completed delete reports existed"):
        check_history([lost_delete])
