"""A polynomial pre-check on one key: every observation needs a write it can have read from.

Rule (sound, never a false alarm): in any linearization, a forced op r (see `model`) observing
state u follows a last state-changing write w that made u, or none (then u is the initial None).
So some such w must exist that does not start after r returns, and no OK write x may be forced
between them by real time: one that starts after w completes and completes before r starts.
If no w qualifies, the key is not linearizable, and each candidate w with the x that overwrote it
explains why. This catches stale reads (the commonest consistency bug) in O(n log n) with a
direct witness, where the search would have to exhaust every order of the ops before them.
"""

from __future__ import annotations

import bisect

from raftkv.check.history import Op, Outcome
from raftkv.check.model import is_forced, makes, wants

# (the write read from, or None for the initial state; what overwrote it, or None when the
# write only started after the read returned)
Overwritten = tuple[Op | None, Op | None]

_INF = float("inf")


def impossible_read(ops: list[Op]) -> tuple[Op, tuple[Overwritten, ...]] | None:
    """The first observation (by return time) that no write can explain, with the reasons."""
    writes = [op for op in ops if not is_forced(op)]
    required = sorted((op for op in writes if op.outcome is Outcome.OK), key=lambda op: op.invoke)
    starts = [op.invoke for op in required]
    # earliest[j]: the OK write completing first among those starting at index j or later.
    earliest: list[Op | None] = [None] * (len(required) + 1)
    for j in range(len(required) - 1, -1, -1):
        nxt = earliest[j + 1]
        earliest[j] = required[j] if nxt is None or _end(required[j]) < _end(nxt) else nxt
    makers: dict[str | None, list[Op | None]] = {None: [None]}
    for op in writes:
        makers.setdefault(makes(op), []).append(op)

    def blocker(after: float, before: float) -> Op | None:
        x = earliest[bisect.bisect_right(starts, after)]
        return x if x is not None and _end(x) < before else None

    readers = (op for op in ops if is_forced(op) and op.outcome is Outcome.OK)
    for r in sorted(readers, key=_end):
        reasons: list[Overwritten] = []
        for w in makers.get(wants(r), []):
            if w is not None and _end(r) < w.invoke:
                reasons.append((w, None))
                continue
            x = blocker(-_INF if w is None else _end(w), r.invoke)
            if x is None:
                break  # r can have read from w
            reasons.append((w, x))
        else:
            return r, tuple(reasons)
    return None


def _end(op: Op) -> float:
    return _INF if op.complete is None else op.complete
