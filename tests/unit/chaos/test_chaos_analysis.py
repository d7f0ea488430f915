"""Timeline, failover times, acknowledged writes lost and stale reads from recorded runs."""

from __future__ import annotations

from raftkv.chaos.analysis import failovers, locate, lost_writes, stale_reads, timeline
from raftkv.chaos.nemesis import FaultWindow
from raftkv.chaos.workload import Event
from raftkv.check import History, Op, OpKind, Outcome


def window(
    start: float, end: float, nodes: tuple[str, ...] = ("n1",), leader: str = "n1"
) -> FaultWindow:
    return FaultWindow("kill-leader", "kill -9 n1", nodes, leader, start, end)


def event(
    op_id: int, end: float, outcome: Outcome, kind: OpKind = OpKind.PUT, node: str = "n1"
) -> Event:
    return Event(
        op_id, end - 0.01, end, kind, outcome, "ok" if outcome is Outcome.OK else "x", node
    )


def test_timeline_counts_per_second_and_marks_faults() -> None:
    events = [
        event(0, 0.2, Outcome.OK),
        event(1, 0.9, Outcome.OK, OpKind.GET, node="n2"),
        event(2, 1.5, Outcome.FAIL),
        event(3, 2.1, Outcome.UNKNOWN),
    ]
    seconds = timeline(events, [window(1.2, 2.5)], 2.1, ["n1", "n2"])
    assert [(s.t, s.ok, s.fail, s.unknown, s.ok_writes) for s in seconds] == [
        (0, 2, 0, 0, 1),
        (1, 0, 1, 0, 0),
        (2, 0, 0, 1, 0),
    ]
    assert seconds[0].ok_by_node == (("n1", 1), ("n2", 1))
    assert [s.faults for s in seconds] == [(), ("kill-leader",), ("kill-leader",)]


def test_failover_is_fault_start_to_the_first_ok_write_invoked_after_it() -> None:
    h = History()
    early = h.put("c", "k", "a", at=0.9)  # invoked before the fault: does not count
    h.ok(early, at=1.1)
    read = h.get("c", "k", at=1.05)  # reads do not count
    h.ok(read, at=1.06, value="a")
    refused = h.put("c", "k", "b", at=1.1)
    h.fail(refused, at=1.2)
    slow = h.put("c", "k", "c", at=1.2)
    h.ok(slow, at=1.9)
    fast = h.delete("c", "k", at=1.4)
    h.ok(fast, at=1.45, existed=True)
    w, never = window(1.0, 2.0), window(5.0, 6.0)
    first, second = failovers(h.ops(), [w, never])
    assert (first.seconds, first.write and first.write.id) == (0.45, fast)
    assert (second.seconds, second.write) == (None, None)
    assert w.hit_leader and not window(1, 2, nodes=("n2",)).hit_leader


def final_read(h: History, key: str, value: str | None, at: float = 100.0) -> Op:
    op = h.get("final", key, at=at)
    return h.ok(op, at=at + 1, value=value)


def test_no_write_lost_when_the_final_state_is_the_last_write() -> None:
    h = History()
    h.ok(h.put("c", "k", "a", at=0), at=1)
    h.ok(h.put("c", "k", "b", at=2), at=3)
    assert lost_writes(h.ops(), {"k": final_read(h, "k", "b")}) == []


def test_an_acknowledged_write_after_the_value_read_is_lost() -> None:
    h = History()
    h.ok(h.put("c", "k", "a", at=0), at=1)
    b = h.put("c", "k", "b", at=2)
    h.ok(b, at=3)
    d = h.delete("c", "k", at=4)
    h.ok(d, at=5, existed=True)
    h.ok(h.delete("c", "k", at=6), at=7, existed=False)  # saw nothing: changed nothing
    lost = lost_writes(h.ops(), {"k": final_read(h, "k", "a")})
    assert [w.write.id for w in lost] == [b, d]
    assert "'a'" in str(lost[0])


def test_a_value_from_an_unknown_put_may_have_landed_last() -> None:
    h = History()
    u = h.put("c", "k", "a", at=0)
    h.unknown(u)
    h.ok(h.put("c", "k", "b", at=2), at=3)
    assert lost_writes(h.ops(), {"k": final_read(h, "k", "a")}) == []


def test_absent_key_loses_puts_that_no_delete_can_follow() -> None:
    h = History()
    old = h.put("c", "k", "a", at=0)
    h.ok(old, at=1)
    d = h.delete("c", "k", at=2)
    h.ok(d, at=3, existed=True)
    newer = h.put("c", "k", "b", at=4)  # acknowledged after the last delete ended
    h.ok(newer, at=5)
    lost = lost_writes(h.ops(), {"k": final_read(h, "k", None)})
    assert [w.write.id for w in lost] == [newer]
    # an unknown delete may come after it: then nothing is lost
    h.unknown(h.delete("c", "k", at=6))
    assert lost_writes(h.ops(), {"k": final_read(h, "k", None, at=200)}) == []


def test_stale_reads_are_all_listed_and_located() -> None:
    h = History()
    h.ok(h.put("c", "k", "a", at=0), at=1)
    h.ok(h.put("c", "k", "b", at=2), at=3)
    s1 = h.get("c", "k", at=4)
    h.ok(s1, at=5, value="a")  # stale
    fine = h.get("c", "k", at=4)
    h.ok(fine, at=5, value="b")
    s2 = h.get("c", "k", at=6)
    h.ok(s2, at=7, value="a")  # stale again
    h.ok(h.get("c", "other", at=6), at=7, value="zzz")  # another key: not asked about
    found = stale_reads(h.ops(), ["k"])
    assert [op.id for op in found] == [s1, s2]
    events = [
        event(s1, 5, Outcome.OK, OpKind.GET, "n3"),
        event(s2, 7, Outcome.OK, OpKind.GET, "n2"),
    ]
    located = locate(found, events, [window(3.5, 5.5, nodes=("n3",))])
    assert [(r.node, len(r.faults)) for r in located] == [("n3", 1), ("n2", 0)]
    assert "served by n3 (kill-leader" in str(located[0])
