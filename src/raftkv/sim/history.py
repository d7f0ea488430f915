"""The simulator's client history, handed to `raftkv.check` for per-key linearizability.

Rules:
- Each `OpRecord` becomes one `raftkv.check` op: `ok` with its completion time (a get with the
  value it read), `fail` (it definitely took no effect), or `unknown` (a write that may have).
- Processes are the clients' Jepsen process numbers; times are simulator time units.
- A check that runs out of its step budget is inconclusive, not a violation: it is returned
  separately so a sweep can count it.
"""

from __future__ import annotations

from raftkv.check import History, OpKind, Verdict, check_history
from raftkv.sim.workload import FAIL, OK, UNKNOWN, OpRecord

_KINDS = {"put": OpKind.PUT, "get": OpKind.GET, "delete": OpKind.DELETE}


def to_history(ops: list[OpRecord]) -> History:
    h = History()
    for op in ops:
        value = op.value if op.kind == "put" else None
        hid = h.invoke(op.process, _KINDS[op.kind], op.key, value, at=op.invoke)
        if op.status == OK:
            h.ok(hid, at=op.complete, value=op.value if op.kind == "get" else None)
        elif op.status == FAIL:
            h.fail(hid, at=op.complete)
        elif op.status == UNKNOWN:
            h.unknown(hid)
        else:
            h.unknown(hid)  # still pending when the run ended
    return h


def check_ops(ops: list[OpRecord]) -> tuple[list[str], int]:
    """(violations as text, number of keys the checker could not decide)."""
    result = check_history(to_history(ops))
    problems = [str(k) for k in result.keys if k.verdict is Verdict.VIOLATION]
    return problems, len(result.unknown)
