"""The register model one key follows: `str | None`, None (absent) at first.

Rules: pure functions of an op and a state. A *forced* op never changes the state it is legal
in (a get; a delete that saw no key): it only observes, so it *wants* one exact state. Every
other op is a write that *makes* a state. A CAS (compare-and-set, also a one-key transaction)
is a write that is legal only in the state it expects.
"""

from __future__ import annotations

from raftkv.check.history import Op, OpKind


def step(op: Op, state: str | None) -> tuple[bool, str | None]:
    """(may `op` take effect in `state`, the state after it)."""
    match op.kind:
        case OpKind.PUT:
            return True, op.value
        case OpKind.CAS:
            return state == op.expect, op.value
        case OpKind.DELETE:
            return op.existed is None or op.existed == (state is not None), None
        case OpKind.GET:
            return op.value == state, state


def is_forced(op: Op) -> bool:
    return op.kind is OpKind.GET or (op.kind is OpKind.DELETE and op.existed is False)


def wants(op: Op) -> str | None:
    """The state a forced op observes."""
    return op.value if op.kind is OpKind.GET else None


def makes(op: Op) -> str | None:
    """The state a write leaves."""
    return op.value if op.kind in (OpKind.PUT, OpKind.CAS) else None
