"""The simulator's client history, handed to `raftkv.check` for per-key linearizability.

Rules:
- Each `OpRecord` becomes one `raftkv.check` op (a CAS as a CAS; one the server refused was
  already turned into the get it performed; opening a session is left out): `ok` with its
  completion time (a get with the value it read), `fail` (it definitely took no effect), or
  `unknown` (a write that may have). A session write retried after an unknown outcome is one
  op from its first invoke to the reply of the attempt that was answered.
- Processes are the clients' Jepsen process numbers; times are simulator time units.
- A check that runs out of its step budget is inconclusive, not a violation: it is returned
  separately so a sweep can count it.
"""

from __future__ import annotations

from raftkv.check import History, OpKind, Verdict, check_history
from raftkv.sim.workload import FAIL, OK, UNKNOWN, OpRecord

_KINDS = {"put": OpKind.PUT, "get": OpKind.GET, "delete": OpKind.DELETE, "cas": OpKind.CAS}


def to_history(ops: list[OpRecord]) -> History:
    h = History()
    for op in ops:
        if op.kind not in _KINDS:
            continue  # opening a session: no effect on any key
        value = op.value if op.kind in ("put", "cas") else None
        if op.kind == "cas":
            assert value is not None
            hid = h.cas(op.process, op.key, op.expect, value, at=op.invoke)
        else:
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
