"""Known linearizable and non-linearizable register histories, and a large random one."""

from __future__ import annotations

import random
import time

import msgspec

from raftkv.check.history import History, Op, OpKind, Outcome
from raftkv.check.linearizability import check_history
from raftkv.check.result import CheckResult, Verdict

# Tiny helpers: end=None leaves the op UNKNOWN; fail=True records a FAIL.


def put(h: History, start: float, end: float | None, value: str, key: str = "k", **kw: bool) -> int:
    op = h.put("c", key, value, at=start)
    if kw.get("fail"):
        h.fail(op, at=end)
    elif end is None:
        h.unknown(op)
    else:
        h.ok(op, at=end)
    return op


def get(h: History, start: float, end: float | None, seen: str | None, key: str = "k") -> int:
    op = h.get("c", key, at=start)
    if end is None:
        h.unknown(op)
    else:
        h.ok(op, at=end, value=seen)
    return op


def delete(
    h: History, start: float, end: float | None, existed: bool | None = None, key: str = "k"
) -> int:
    op = h.delete("c", key, at=start)
    if end is None:
        h.unknown(op)
    else:
        h.ok(op, at=end, existed=existed)
    return op


def violation(h: History | list[Op]) -> CheckResult:
    result = check_history(h)
    assert result.verdict is Verdict.VIOLATION, str(result)
    assert not result.ok
    return result


def test_empty_and_sequential_histories_are_linearizable() -> None:
    assert check_history(History()).ok
    h = History()
    get(h, 0, 1, None)
    put(h, 2, 3, "x")
    get(h, 4, 5, "x")
    delete(h, 6, 7, existed=True)
    get(h, 8, 9, None)
    delete(h, 10, 11, existed=False)
    result = check_history(h)
    assert result.ok and result.verdict is Verdict.OK
    assert str(result).startswith("ok: 1 keys, 0 violating, 0 unknown")


def test_stale_read_after_completed_write() -> None:
    h = History()
    x = put(h, 0, 1, "x")
    y = put(h, 2, 3, "y")
    stale = get(h, 4, 5, "x")
    result = violation(h)
    (bad,) = result.violations
    assert bad.key == "k" and bad.witness is not None
    assert bad.steps == 0  # found by the read-from pre-check, before any search
    assert bad.witness.stuck.id == stale
    assert [(w and w.id, o and o.id) for w, o in bad.witness.overwritten or ()] == [(x, y)]
    assert str(result).splitlines() == [
        "violation: 1 keys, 1 violating, 0 unknown",
        "key 'k': not linearizable; no write can explain",
        "    #2 c: get('k') -> 'x' [4, 5] ok",
        "  it cannot read from #0 c: put('k', 'x') [0, 1] ok",
        "    overwritten by #1 c: put('k', 'y') [2, 3] ok",
    ]


def test_stale_read_with_the_value_written_again_too_late() -> None:
    h = History()
    put(h, 0, 1, "x")
    put(h, 2, 3, "y")
    stale = get(h, 4, 5, "x")
    again = put(h, 6, 7, "x")  # x is written again, but only after the read returned
    get(h, 4, 5, None)  # stale too: the initial state was overwritten
    (bad,) = violation(h).violations
    assert bad.witness is not None and bad.witness.stuck.id == stale
    assert f"  it cannot read from #{again} c: put('k', 'x') [6, 7] ok" in str(bad)
    assert "    invoked after it returned" in str(bad)


def test_two_reads_observe_writes_in_contradictory_orders() -> None:
    h = History()
    put(h, 0, 100, "a")
    put(h, 0, 100, "b")
    get(h, 1, 2, "a")  # reader 1: a then b
    get(h, 3, 4, "b")
    get(h, 1, 2, "b")  # reader 2: b then a
    get(h, 3, 4, "a")
    (bad,) = violation(h).violations  # every read has a write to read from: the search decides
    assert bad.witness is not None and bad.witness.overwritten is None
    assert str(bad).splitlines() == [
        "key 'k': not linearizable; at best 2 ops placed in order (6 completed in all), "
        "leaving the register at 'a'",
        "  last placed:",
        "    #0 c: put('k', 'a') [0, 100] ok",
        "    #2 c: get('k') -> 'a' [1, 2] ok",
        "  must take effect before it returns, but cannot:",
        "    #4 c: get('k') -> 'b' [1, 2] ok   <- illegal at 'a'",
        "  unplaced ops concurrent with it:",
        "    #1 c: put('k', 'b') [0, 100] ok   <- legal, but leaves the ops below unplaceable",
        "  waiting for a state that no remaining write produces:",
        "    #5 c: get('k') -> 'a' [3, 4] ok",
    ]
    # Either reader alone is fine.
    h1 = History()
    put(h1, 0, 100, "a")
    put(h1, 0, 100, "b")
    get(h1, 1, 2, "a")
    get(h1, 3, 4, "b")
    get(h1, 1, 2, "a")
    assert check_history(h1).ok


def test_read_of_a_value_never_written() -> None:
    h = History()
    put(h, 0, 1, "x")
    ghost = get(h, 0, 2, "ghost")
    result = violation(h)
    (bad,) = result.violations
    assert bad.witness is not None and bad.witness.stuck.id == ghost
    assert bad.witness.overwritten == ()
    assert "no op that may have taken effect writes that state" in str(bad)


def test_read_of_an_indeterminate_writes_value_is_allowed() -> None:
    h = History()
    put(h, 0, 1, "x")
    put(h, 2, None, "y")  # timed out
    get(h, 5, 6, "x")  # not yet applied
    get(h, 50, 51, "y")  # applied late
    get(h, 60, 61, "y")
    assert check_history(h).ok
    # ...but once seen it cannot be undone, and it cannot act before it was invoked.
    put(h, 70, 71, "z")
    get(h, 72, 73, "z")
    assert check_history(h).ok
    h2 = History()
    get(h2, 0, 1, "y")
    put(h2, 2, None, "y")
    violation(h2)


def test_indeterminate_write_that_never_took_effect_is_allowed() -> None:
    h = History()
    put(h, 0, 1, "x")
    put(h, 2, None, "lost")
    delete(h, 3, None)
    get(h, 10, 11, "x")
    get(h, 12, 13, "x")
    assert check_history(h).ok
    # An indeterminate write that took effect cannot be undone later.
    get(h, 14, 15, "lost")
    get(h, 16, 17, "x")
    violation(h)


def test_indeterminate_delete_may_explain_an_absent_read() -> None:
    h = History()
    put(h, 0, 1, "x")
    delete(h, 2, None)
    get(h, 5, 6, None)
    assert check_history(h).ok


def test_delete_existed_must_match_the_state() -> None:
    h = History()
    delete(h, 0, 1, existed=True)  # nothing was there
    violation(h)
    h = History()
    put(h, 0, 1, "x")
    delete(h, 2, 3, existed=False)  # x was there
    violation(h)
    h = History()
    put(h, 0, 1, "x")
    delete(h, 2, 3, existed=True)
    delete(h, 4, 5, existed=True)  # already gone
    violation(h)
    h = History()
    put(h, 0, 10, "x")
    delete(h, 1, 3, existed=False)  # concurrent with the put: it may go first
    delete(h, 4, 5, existed=None)  # existed not reported: any state will do
    get(h, 11, 12, None)
    assert check_history(h).ok


def test_concurrent_overlapping_ops_fine_in_one_order_only() -> None:
    h = History()
    put(h, 0, 10, "a")  # invoked first, so the search tries it first...
    put(h, 1, 10, "b")
    get(h, 2, 9, "b")
    get(h, 11, 12, "a")  # ...but only b, get, a works
    assert check_history(h).ok


def test_delete_invoked_first_may_take_effect_after_a_later_put() -> None:
    # The delete leaves the initial None as it is if placed first, but it is not a pure
    # observation: placed after the put it is what the read of None needs.
    h = History()
    delete(h, 0, 30)
    put(h, 1, 10, "x")
    get(h, 20, 40, None)
    assert check_history(h).ok


def test_touching_intervals_count_as_concurrent() -> None:
    h = History()
    put(h, 0, 1, "x")
    get(h, 1, 2, None)  # invoked at the instant the put returned
    assert check_history(h).ok
    h = History()
    put(h, 0, 1, "x")
    get(h, 1.5, 2, None)
    violation(h)


def test_read_of_a_failed_writes_value_is_a_violation() -> None:
    h = History()
    put(h, 0, 1, "x", fail=True)
    put(h, 2, None, "y", fail=True)  # refused without a completion time
    get(h, 3, 4, "x")
    violation(h)
    h = History()
    put(h, 0, 1, "x", fail=True)
    get(h, 3, 4, None)
    assert check_history(h).ok


def test_indeterminate_reads_tell_nothing() -> None:
    h = History()
    put(h, 0, 1, "x")
    op = h.get("c", "k", at=2)
    h.unknown(op)
    h.get("c", "k", at=3)  # never completed at all
    assert check_history(h).ok


def test_keys_are_checked_independently() -> None:
    h = History()
    put(h, 0, 1, "x", key="a")
    get(h, 2, 3, "x", key="a")
    put(h, 0, 1, "x", key="b")
    get(h, 2, 3, None, key="b")
    result = violation(h)
    assert [(r.key, r.verdict) for r in result.keys] == [
        ("a", Verdict.OK),
        ("b", Verdict.VIOLATION),
    ]
    assert "key 'b'" in str(result) and "key 'a'" not in str(result)


def test_many_unobserved_indeterminate_writes_stay_cheap() -> None:
    h = History()
    for i in range(60):  # 2^60 subsets if every lost write were kept in the search
        put(h, i, None, f"lost{i}")
        delete(h, i, None)
    put(h, 100, 101, "seen")
    put(h, 30, None, "late")
    get(h, 200, 201, "late")
    get(h, 202, 203, "late")
    result = check_history(h)
    assert result.ok
    assert result.keys[0].steps < 50  # unobserved lost writes are never tried


def test_step_budget_gives_unknown_not_violation() -> None:
    h = History()
    for i in range(10):  # ten concurrent writes of two values: only exhaustion refutes the reads
        put(h, 0, 100, "ab"[i % 2])
    get(h, 101, 102, "a")
    get(h, 103, 104, "b")
    full = check_history(h)
    assert full.verdict is Verdict.VIOLATION and full.keys[0].steps > 50
    result = check_history(h, max_steps=50)
    assert result.verdict is Verdict.UNKNOWN and not result.ok
    assert result.violations == () and [r.key for r in result.unknown] == ["k"]
    assert "unknown, step budget spent" in str(result)


def random_history(seed: int, n_ops: int = 2000, n_keys: int = 5, spread: float = 12) -> list[Op]:
    """A linearizable history: a sequential register per key, each op taking effect at a random
    point inside a random interval around it; some writes lost (applied or not), some refused."""
    rng = random.Random(seed)
    state: dict[str, str | None] = {}
    ops: list[Op] = []
    t = 0.0
    for i in range(n_ops):
        t += rng.expovariate(1.0)  # the op's linearization point
        key = f"k{rng.randrange(n_keys)}"
        kind = rng.choices([OpKind.GET, OpKind.PUT, OpKind.DELETE], [50, 35, 15])[0]
        invoke, complete = t - rng.uniform(0, spread), t + rng.uniform(0, spread)
        fate = rng.random()
        outcome = Outcome.OK
        if kind is not OpKind.GET and fate < 0.05:
            outcome = Outcome.UNKNOWN
        elif fate < 0.08:
            outcome = Outcome.FAIL
        applied = outcome is Outcome.OK or (outcome is Outcome.UNKNOWN and fate < 0.025)
        value = existed = None
        before = state.get(key)
        match kind:
            case OpKind.PUT:
                value = f"v{i}"
                if applied:
                    state[key] = value
            case OpKind.DELETE:
                existed = (before is not None) if outcome is Outcome.OK and fate < 0.7 else None
                if applied:
                    state[key] = None
            case OpKind.GET:
                value = before if outcome is Outcome.OK else None
        ops.append(
            Op(
                id=i, client=i % 7, kind=kind, key=key, value=value, invoke=invoke,
                complete=None if outcome is Outcome.UNKNOWN else complete,
                outcome=outcome, existed=existed,
            )
        )  # fmt: skip
    return ops


def test_large_random_linearizable_history_passes_fast() -> None:
    # ~one op per time unit over all keys, each taking up to 2 * spread: with spread 60 some
    # 60 ops are in flight at once, about 12 per key.
    for seed, spread in [(0, 12), (1, 12), (2, 30), (3, 60)]:
        ops = random_history(seed, spread=spread)
        start = time.perf_counter()
        result = check_history(ops)
        elapsed = time.perf_counter() - start
        assert result.ok, str(result)
        assert len(result.keys) == 5
        assert elapsed < 2.0, f"seed {seed}: {elapsed:.2f}s"


def test_large_random_history_with_a_read_of_a_never_written_value_fails() -> None:
    ops = random_history(1)
    idx = next(i for i, op in enumerate(ops) if op.kind is OpKind.GET and op.outcome is Outcome.OK)
    ops[idx] = msgspec.structs.replace(ops[idx], value="corrupt")
    (bad,) = violation(ops).violations
    assert bad.key == ops[idx].key and bad.witness is not None
    assert bad.witness.stuck.id == ops[idx].id


def test_large_random_history_with_one_stale_read_fails() -> None:
    ops = random_history(2)
    ok = [op for op in ops if op.outcome is Outcome.OK]
    # Find a read r and puts w1 < w2 < r in real time on r's key: reading w1's (unique) value
    # after w2 has completed is stale in every order.
    for r in (op for op in ok if op.kind is OpKind.GET and op.invoke > 200):
        assert r.complete is not None
        writes = [op for op in ok if op.key == r.key and op.kind is not OpKind.GET]
        done_before = [w for w in writes if w.complete is not None and w.complete < r.invoke]
        w2 = max(done_before, key=lambda w: w.invoke)
        w1 = next(
            w
            for w in done_before
            if w.kind is OpKind.PUT and w.complete is not None and w.complete < w2.invoke
        )
        break
    assert w1.value != r.value
    ops[r.id] = msgspec.structs.replace(r, value=w1.value)
    assert check_history(ops[: r.id]).ok
    (bad,) = violation(ops).violations
    assert bad.key == r.key


def brute_force_linearizable(ops: list[Op]) -> bool:
    """Try every order directly: the definition, with no memo and no pruning."""
    live = [op for op in ops if op.outcome is Outcome.OK or (
        op.outcome is Outcome.UNKNOWN and op.kind is not OpKind.GET)]  # fmt: skip

    def must_precede(a: Op, b: Op) -> bool:
        return a.outcome is Outcome.OK and a.complete is not None and a.complete < b.invoke

    def search(placed: frozenset[int], state: dict[str, str | None]) -> bool:
        if all(op.id in placed for op in live if op.outcome is Outcome.OK):
            return True
        for op in live:
            if op.id in placed or any(
                must_precede(a, op) and a.id not in placed for a in live if a.key == op.key
            ):
                continue
            now = state.get(op.key)
            match op.kind:
                case OpKind.GET if op.value != now:
                    continue
                case OpKind.DELETE if op.existed is not None and op.existed != (now is not None):
                    continue
                case OpKind.CAS if op.expect != now:
                    continue
            after = (
                op.value
                if op.kind in (OpKind.PUT, OpKind.CAS)
                else None
                if op.kind is OpKind.DELETE
                else now
            )
            if search(placed | {op.id}, {**state, op.key: after}):
                return True
        return False

    return search(frozenset(), {})


def test_indeterminate_delete_then_indeterminate_cas_explain_a_read() -> None:
    """Found by the simulator: an unknown delete makes the register absent, an unknown CAS from
    absent writes v, a get reads v. The delete is only observed by the (optional) CAS."""
    h = History()
    put(h, 0, 1, "x")
    delete(h, 2, None)
    cas = h.cas("c", "k", None, "v", at=3)
    h.unknown(cas)
    get(h, 5, 6, "v")
    assert check_history(h).ok


def test_agrees_with_brute_force_on_small_random_histories_with_cas() -> None:
    rng = random.Random(11)
    verdicts = []
    for _ in range(2000):
        h = History()
        for _ in range(rng.randint(1, 7)):
            start = rng.randint(0, 8)
            end = start + rng.randint(0, 5)
            key = rng.choice("ab")
            lost = rng.random() < 0.3
            match rng.choice([OpKind.PUT, OpKind.GET, OpKind.GET, OpKind.DELETE, OpKind.CAS]):
                case OpKind.PUT:
                    put(h, start, None if lost else end, rng.choice("xyz"), key)
                case OpKind.GET:
                    get(h, start, None if lost else end, rng.choice(["x", "y", "z", None]), key)
                case OpKind.DELETE:
                    delete(h, start, None if lost else end, None, key)
                case OpKind.CAS:
                    op = h.cas("c", key, rng.choice(["x", "y", None]), rng.choice("xyz"), at=start)
                    h.unknown(op) if lost else h.ok(op, at=end)
        expected = brute_force_linearizable(list(h.ops()))
        assert check_history(h).ok == expected, "\n".join(map(str, h.ops()))
        verdicts.append(expected)
    assert 300 < sum(verdicts) < 1700  # both verdicts well represented


def test_agrees_with_brute_force_on_small_random_histories() -> None:
    rng = random.Random(7)
    verdicts = []
    for _ in range(2000):  # small and dense: ties, overlaps, repeated values, lost writes
        h = History()
        for _ in range(rng.randint(1, 7)):
            start = rng.randint(0, 8)
            end = start + rng.randint(0, 5)
            key = rng.choice("ab")
            lost, refused = rng.random() < 0.15, rng.random() < 0.1
            match rng.choice([OpKind.PUT, OpKind.GET, OpKind.GET, OpKind.DELETE]):
                case OpKind.PUT:
                    put(h, start, None if lost else end, rng.choice("xy"), key, fail=refused)
                case OpKind.GET:
                    get(h, start, None if lost else end, rng.choice(["x", "y", None]), key)
                case OpKind.DELETE:
                    delete(h, start, None if lost else end, rng.choice([None, True, False]), key)
        expected = brute_force_linearizable(list(h.ops()))
        assert check_history(h).ok == expected, "\n".join(map(str, h.ops()))
        verdicts.append(expected)
    assert 500 < sum(verdicts) < 1500  # both verdicts well represented
