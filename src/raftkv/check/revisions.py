"""Revisions reported by the store must agree with real time and with the values read.

Rules (sound for any linearizable store with etcd-style revisions; values unique per write):
1. Real time: if OK write A completed before OK write B was invoked, rev(A) < rev(B) (a later
   write gets a later revision). Writes of one transaction share a revision, but a workload
   records at most one op per transaction.
2. One revision per write: two OK writes (put or succeeded CAS) of the same key never report
   the same revision.
3. Reads: an OK get that observed value v with mod_revision m read the write of v, so that
   write's revision (when known) is m.
4. Reads move forward: if a write to the key with revision r completed before an OK get of the
   key was invoked, the get's mod_revision is >= r (or the key was deleted in between, which
   the get's absent value shows; absent reads carry no revision and are skipped here).
Pure: works on `Op` records; the linearizability search (`linearizability.py`) checks values.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from raftkv.check.history import Op, OpKind, Outcome


def _is_write(op: Op) -> bool:
    return op.kind in (OpKind.PUT, OpKind.CAS) and op.outcome is Outcome.OK


def revision_problems(history: Iterable[Op]) -> list[str]:
    """Every violation of the rules above, in words (empty: consistent)."""
    ops = list(history)
    problems: list[str] = []
    writes = [op for op in ops if _is_write(op) and op.revision is not None]
    # 1. real time: scan writes by invoke; compare with the max revision completed before.
    done = sorted(writes, key=lambda op: op.complete or 0.0)
    ends = [op.complete or 0.0 for op in done]
    prefix_max: list[tuple[int, Op]] = []
    best: tuple[int, Op] | None = None
    for op in done:
        assert op.revision is not None
        if best is None or op.revision > best[0]:
            best = (op.revision, op)
        prefix_max.append(best)
    for b in writes:
        pos = bisect.bisect_left(ends, b.invoke)  # writes completing strictly before b.invoke
        if pos:
            rev_a, a = prefix_max[pos - 1]
            assert b.revision is not None
            if rev_a >= b.revision:
                problems.append(f"{b} got revision {b.revision}, not above {rev_a} of {a}")
    # 2. unique per key.
    seen: dict[tuple[str, int], Op] = {}
    for op in writes:
        assert op.revision is not None
        other = seen.setdefault((op.key, op.revision), op)
        if other is not op:
            problems.append(f"{op} and {other} both report revision {op.revision}")
    # 3. reads name the revision of the write they read.
    by_value = {(op.key, op.value): op for op in writes}
    reads = [
        op
        for op in ops
        if op.kind is OpKind.GET and op.outcome is Outcome.OK and op.value is not None
    ]
    for r in reads:
        w = by_value.get((r.key, r.value))
        if r.revision is not None and w is not None and w.revision != r.revision:
            problems.append(f"{r} read mod_revision {r.revision}, but {w} wrote it at {w.revision}")
    # 4. reads never go behind a write that completed before them.
    for key, key_reads in _group(r for r in reads if r.revision is not None).items():
        key_done = [op for op in done if op.key == key]
        key_ends = [op.complete or 0.0 for op in key_done]
        running: list[tuple[int, Op]] = []
        for op in key_done:
            assert op.revision is not None
            if not running or op.revision > running[-1][0]:
                running.append((op.revision, op))
            else:
                running.append(running[-1])
        for r in key_reads:
            pos = bisect.bisect_left(key_ends, r.invoke)
            assert r.revision is not None
            if pos and running[pos - 1][0] > r.revision:
                rev_w, w = running[pos - 1]
                problems.append(
                    f"{r} read mod_revision {r.revision} after {w} completed at {rev_w}"
                )
    return problems


def _group(ops: Iterable[Op]) -> dict[str, list[Op]]:
    out: dict[str, list[Op]] = {}
    for op in ops:
        out.setdefault(op.key, []).append(op)
    return out
