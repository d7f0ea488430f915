"""What a run's records say beyond linearizability: availability, failover, lost writes.

Rules:
- Pure functions of the recorded events, fault windows and history (no I/O, no clock).
- Availability: per second of the run clock, ops completed OK / FAIL / UNKNOWN (by the time the
  client heard back or gave up), with the faults active in that second.
- Failover time of a fault: from its start to the completion of the first OK write invoked after
  it started (None if no write succeeded before the run ended).
- Acknowledged writes lost, against the final linearizable read of each key after healing.
  Sound by real-time order alone, with unique values (never a false alarm):
  * the final read saw the value of put P, and P was acknowledged: every acknowledged write
    (put, or delete that reported a value) invoked after P completed came later and is gone;
  * it saw the value of a put whose outcome is unknown: that put may have landed last; nothing
    can be called lost;
  * it saw no value: every acknowledged put that no delete could follow (each delete that may
    have taken effect ended before the put began) is gone.
  The full checker judges the same final reads too; this names the writes in the seed's terms.
- Stale reads: every OK read that no write can explain (the checker's own `readfrom` test, run
  again without each reader it finds, up to a cap per key). The checker stops at the first per
  key; listing them all shows *where* (which node, during which fault) a bug bites.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from raftkv.chaos.nemesis import FaultWindow
from raftkv.chaos.workload import Event
from raftkv.check import Op, OpKind, Outcome
from raftkv.check.readfrom import impossible_read


@dataclass(frozen=True, slots=True)
class Second:
    t: int  # [t, t + 1) on the run clock
    ok: int
    fail: int
    unknown: int
    ok_writes: int
    ok_by_node: tuple[tuple[str, int], ...]  # OK ops per node that served them, sorted by node
    faults: tuple[str, ...]  # names of the faults active during this second


@dataclass(frozen=True, slots=True)
class Failover:
    fault: FaultWindow
    seconds: float | None  # fault start -> first OK write invoked after it; None: none
    write: Op | None


@dataclass(frozen=True, slots=True)
class LostWrite:
    key: str
    write: Op  # acknowledged, yet absent from the final state
    final: Op  # the final read
    because: str

    def __str__(self) -> str:
        return f"key {self.key!r}: acknowledged {self.write}\n  lost: {self.because}"


def timeline(
    events: Iterable[Event], windows: Sequence[FaultWindow], end: float, nodes: Sequence[str]
) -> list[Second]:
    seconds = max(1, math.ceil(end))
    counts = [[0, 0, 0, 0] for _ in range(seconds)]
    by_node = [dict.fromkeys(sorted(nodes), 0) for _ in range(seconds)]
    column = {Outcome.OK: 0, Outcome.FAIL: 1, Outcome.UNKNOWN: 2}
    for e in events:
        t = min(max(int(e.end), 0), seconds - 1)
        counts[t][column[e.outcome]] += 1
        if e.outcome is Outcome.OK:
            by_node[t][e.node] = by_node[t].get(e.node, 0) + 1
            counts[t][3] += e.kind is not OpKind.GET
    return [
        Second(
            t,
            ok=counts[t][0],
            fail=counts[t][1],
            unknown=counts[t][2],
            ok_writes=counts[t][3],
            ok_by_node=tuple(sorted(by_node[t].items())),
            faults=tuple(w.name for w in windows if w.start < t + 1 and w.end > t),
        )
        for t in range(seconds)
    ]


def failovers(ops: Iterable[Op], windows: Sequence[FaultWindow]) -> list[Failover]:
    writes = sorted(
        (op for op in ops if op.kind is not OpKind.GET and op.outcome is Outcome.OK),
        key=lambda op: op.invoke,
    )
    result = []
    for w in windows:
        after = [op for op in writes if op.invoke >= w.start and op.complete is not None]
        first = min(after, key=lambda op: op.complete or 0.0, default=None)
        if first is None or first.complete is None:
            result.append(Failover(w, None, None))
        else:
            result.append(Failover(w, round(first.complete - w.start, 3), first))
    return result


def lost_writes(ops: Iterable[Op], final_reads: Mapping[str, Op]) -> list[LostWrite]:
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        if op.kind is not OpKind.GET and op.outcome is not Outcome.FAIL:
            by_key.setdefault(op.key, []).append(op)
    lost: list[LostWrite] = []
    for key in sorted(final_reads):
        lost += _lost_on_key(key, by_key.get(key, []), final_reads[key])
    return lost


def _lost_on_key(key: str, writes: list[Op], final: Op) -> list[LostWrite]:
    acked = [
        op
        for op in writes
        if op.outcome is Outcome.OK and op.complete is not None and op.existed is not False
    ]  # a delete that found no key changed nothing, so it cannot be lost
    if final.value is not None:
        makers = [
            op for op in writes if op.kind in (OpKind.PUT, OpKind.CAS) and op.value == final.value
        ]
        done = [op for op in makers if op.outcome is Outcome.OK and op.complete is not None]
        if not done or len(done) != len(makers):
            return []  # an unknown put may have landed last; no maker: the checker reports it
        maker_end = done[0].complete
        assert maker_end is not None
        return [
            LostWrite(key, op, final, f"the final read saw {final.value!r}, written before it")
            for op in acked
            if op is not done[0] and op.invoke > maker_end
        ]
    erasers = [op for op in writes if op.kind is OpKind.DELETE and op.existed is not False]
    found = []
    for op in acked:
        if op.kind is not OpKind.PUT:
            continue
        if any(d.complete is None or d.complete > op.invoke for d in erasers):
            continue  # some delete may have come after it
        found.append(
            LostWrite(key, op, final, "the final read saw no value and no delete came after it")
        )
    return found


@dataclass(frozen=True, slots=True)
class StaleRead:
    op: Op  # an OK get (or a delete that saw no key) that no write explains
    node: str  # the node that answered it
    faults: tuple[FaultWindow, ...]  # the faults active while it ran

    def __str__(self) -> str:
        during = "; ".join(f"{w.name}: {w.detail}" for w in self.faults) or "no fault active"
        return f"{self.op} served by {self.node} ({during})"


def locate(
    reads: Iterable[Op], events: Iterable[Event], windows: Sequence[FaultWindow]
) -> list[StaleRead]:
    """Which node served each read, and which faults overlapped it."""
    node_of = {e.op_id: e.node for e in events}
    located = []
    for op in reads:
        end = op.complete if op.complete is not None else op.invoke
        overlapping = tuple(w for w in windows if w.start <= end and w.end >= op.invoke)
        located.append(StaleRead(op, node_of.get(op.id, "?"), overlapping))
    return located


def stale_reads(ops: Iterable[Op], keys: Iterable[str], cap: int = 500) -> list[Op]:
    """OK reads of `keys` that no write can explain, at most `cap` per key, by op id."""
    wanted = set(keys)
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        if op.key in wanted and (
            op.outcome is Outcome.OK
            or (op.outcome is Outcome.UNKNOWN and op.kind is not OpKind.GET)
        ):
            by_key.setdefault(op.key, []).append(op)
    found: list[Op] = []
    for key in sorted(by_key):
        remaining = by_key[key]
        for _ in range(cap):
            hit = impossible_read(remaining)
            if hit is None:
                break
            reader = hit[0]
            found.append(reader)
            remaining = [op for op in remaining if op is not reader]
    return sorted(found, key=lambda op: op.id)
