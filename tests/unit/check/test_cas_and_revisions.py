"""The checker's CAS model and the revision consistency rules."""

from __future__ import annotations

from raftkv.check.history import History
from raftkv.check.linearizability import check_history
from raftkv.check.result import Verdict
from raftkv.check.revisions import revision_problems


def verdict(h: History) -> Verdict:
    return check_history(h).verdict


def test_cas_succeeds_only_from_the_expected_value() -> None:
    h = History()
    h.ok(h.put(1, "k", "a", at=0), at=1, revision=5)
    h.ok(h.cas(2, "k", "a", "b", at=2), at=3, revision=6)
    h.ok(h.get(1, "k", at=4), at=5, value="b", revision=6)
    assert verdict(h) is Verdict.OK
    assert revision_problems(h) == []

    bad = History()
    bad.ok(bad.put(1, "k", "a", at=0), at=1)
    bad.ok(bad.put(1, "k", "z", at=2), at=3)
    bad.ok(bad.cas(2, "k", "a", "b", at=4), at=5)  # "a" was overwritten before it began
    assert verdict(bad) is Verdict.VIOLATION


def test_two_cas_from_the_same_value_cannot_both_win() -> None:
    h = History()
    h.ok(h.put(1, "k", "a", at=0), at=1)
    h.ok(h.cas(2, "k", "a", "b", at=2), at=5)
    h.ok(h.cas(3, "k", "a", "c", at=2), at=5)
    assert verdict(h) is Verdict.VIOLATION
    # With one of them unknown the history is fine: it may simply not have happened.
    ok = History()
    ok.ok(ok.put(1, "k", "a", at=0), at=1)
    ok.ok(ok.cas(2, "k", "a", "b", at=2), at=5)
    ok.unknown(ok.cas(3, "k", "a", "c", at=2))
    assert verdict(ok) is Verdict.OK


def test_cas_on_absent_key() -> None:
    h = History()
    h.ok(h.cas(1, "k", None, "first", at=0), at=1)
    h.ok(h.get(2, "k", at=2), at=3, value="first")
    assert verdict(h) is Verdict.OK


def test_revision_rules_catch_what_values_cannot() -> None:
    behind = History()
    behind.ok(behind.put(1, "k", "a", at=0), at=1, revision=10)
    behind.ok(behind.put(1, "j", "b", at=2), at=3, revision=9)  # later write, older revision
    assert any("not above" in p for p in revision_problems(behind))

    twice = History()
    twice.ok(twice.put(1, "k", "a", at=0), at=5, revision=7)
    twice.ok(twice.put(2, "k", "b", at=0), at=5, revision=7)
    assert any("both report" in p for p in revision_problems(twice))

    wrong_read = History()
    wrong_read.ok(wrong_read.put(1, "k", "a", at=0), at=1, revision=7)
    wrong_read.ok(wrong_read.get(2, "k", at=2), at=3, value="a", revision=8)
    assert any("wrote it at" in p for p in revision_problems(wrong_read))

    stale = History()
    stale.ok(stale.put(1, "k", "a", at=0), at=1, revision=7)
    stale.ok(stale.put(1, "k", "b", at=2), at=3, revision=8)
    stale.ok(stale.get(2, "k", at=4), at=5, value="zz", revision=7)
    assert any("after" in p for p in revision_problems(stale))


def test_an_unknown_delete_can_explain_a_cas_on_an_absent_key() -> None:
    # Found by the simulator: the search must try the optional delete for the CAS's sake.
    h = History()
    h.ok(h.put(1, "k", "a", at=0), at=1)
    h.unknown(h.delete(2, "k", at=2))
    h.ok(h.cas(3, "k", None, "b", at=10), at=11)
    h.ok(h.get(4, "k", at=12), at=13, value="b")
    assert verdict(h) is Verdict.OK
    # Without the delete, the same CAS is a violation.
    bad = History()
    bad.ok(bad.put(1, "k", "a", at=0), at=1)
    bad.ok(bad.cas(3, "k", None, "b", at=10), at=11)
    assert verdict(bad) is Verdict.VIOLATION
