"""Per-key linearizability checking of a key-value history (Wing & Gong's search, Lowe's memo).

Model: every key is an independent register holding `str | None` (None = absent, the initial
state), so a history is linearizable iff each key's sub-history is (locality, Herlihy & Wing),
and keys are checked one by one. `put(v)` sets v; `delete` sets None and, if it reported
`existed`, that must equal "the register was not None"; `get` must observe the current value.

What enters the search for a key:
- OK ops, each to be placed once between its invoke and its complete;
- UNKNOWN puts/deletes as *optional* ops: placeable any time after invoke, or never (no return
  event). One whose resulting state nothing observes (no OK get saw that value, no delete's
  `existed` saw that emptiness) is dropped up front: removing it from any valid order leaves the
  order valid, and each kept one doubles the space the search may have to cover;
- FAIL ops and UNKNOWN gets are dropped: they took no effect / tell nothing.
Real-time order is strict: op A precedes B only if A.complete < B.invoke. At equal times the call
sorts first, so touching intervals count as concurrent (a coarse clock never causes a false alarm).

Algorithm (Wing & Gong's search with Lowe's memo, "Testing for linearizability", 2017, §3):
call and return events sit in one doubly linked list in time order; the ops that may go next are
those whose call precedes the first remaining return. Place one (legal in the current state, and
(placed-set bitset, new state) not seen before), lift its events out of the list, recurse; when
none works, backtrack. Success once every OK op is placed: optional ops left in the list can
always be left out. Three refinements, each sound (they only cut configurations with no
completion), keep it fast on real histories:
- the op of the first return is tried first: it is the one that must be placed soonest;
- a *forced* op (one that never changes the state it is legal in: a get, or a delete that saw no
  key) is placed alone when legal: if any order extends the prefix, one placing it right now does,
  since nothing pending must precede it; so when it fails, its prefix has failed too;
- *starvation*: never leave a state that an unplaced forced op needs when no unplaced write can
  produce it again (with unique values, this catches a stale read as soon as it becomes one).
The deepest point reached is kept as the witness of a failure; a step budget per key turns a
blow-up into the distinct verdict UNKNOWN.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from raftkv.check.history import History, Op, OpKind, Outcome

DEFAULT_MAX_STEPS = 1_000_000  # per key: some seconds of search at most
_PREFIX_SHOWN = 3  # placed ops shown before the stuck point
_SHOWN = 12  # ops of one kind printed in a witness; the rest are counted


class Verdict(enum.Enum):
    OK = "ok"
    VIOLATION = "violation"
    UNKNOWN = "unknown"  # the step budget ran out: neither proven nor refuted


@dataclass(frozen=True, slots=True)
class Witness:
    """Where the deepest attempt to linearize a key got stuck."""

    key: str
    state: str | None  # register value after the longest consistent prefix found
    placed: int  # ops in that prefix (optional ones included)
    required: int  # OK ops, which every linearization must place
    prefix: tuple[Op, ...]  # the last few ops of that prefix, in linearization order
    stuck: Op  # returned before any order of the ops around it could place it
    concurrent: tuple[Op, ...]  # other unplaced ops invoked before `stuck` returned
    stranded: tuple[Op, ...]  # unplaced ops needing `state`, which no unplaced write restores

    def __str__(self) -> str:
        lines = [
            f"key {self.key!r}: not linearizable; at best {self.placed} ops placed in order "
            f"({self.required} completed in all), leaving the register at {self.state!r}",
            "  last placed:" if self.prefix else "  nothing placed before:",
            *(f"    {op}" for op in self.prefix),
            "  must take effect before it returns, but cannot:",
            f"    {self.stuck}{self._why(self.stuck)}",
        ]
        if self.concurrent:
            lines.append("  unplaced ops concurrent with it:")
            lines += (f"    {op}{self._why(op)}" for op in self.concurrent[:_SHOWN])
            if len(self.concurrent) > _SHOWN:
                lines.append(f"    ... and {len(self.concurrent) - _SHOWN} more")
        if self.stranded:
            lines.append(f"  still needing the register at {self.state!r}; no write restores it:")
            lines += (f"    {op}" for op in self.stranded[:_SHOWN])
        return "\n".join(lines)

    def _why(self, op: Op) -> str:
        legal, after = _legal(op, self.state)
        if not legal:
            return f"   <- illegal at {self.state!r}"
        if self.stranded and after != self.state:
            return "   <- would strand the ops below"
        return ""


@dataclass(frozen=True, slots=True)
class KeyResult:
    key: str
    verdict: Verdict
    ops: int  # ops that entered the search
    steps: int  # search steps spent
    witness: Witness | None = None  # set iff verdict is VIOLATION

    def __str__(self) -> str:
        match self.verdict:
            case Verdict.VIOLATION:
                return str(self.witness)
            case Verdict.UNKNOWN:
                return f"key {self.key!r}: unknown, step budget spent after {self.steps} steps"
            case Verdict.OK:
                return f"key {self.key!r}: ok ({self.ops} ops, {self.steps} steps)"


@dataclass(frozen=True, slots=True)
class CheckResult:
    keys: tuple[KeyResult, ...]  # sorted by key

    @property
    def verdict(self) -> Verdict:
        verdicts = {r.verdict for r in self.keys}
        for v in (Verdict.VIOLATION, Verdict.UNKNOWN):
            if v in verdicts:
                return v
        return Verdict.OK

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    @property
    def violations(self) -> tuple[KeyResult, ...]:
        return tuple(r for r in self.keys if r.verdict is Verdict.VIOLATION)

    @property
    def unknown(self) -> tuple[KeyResult, ...]:
        return tuple(r for r in self.keys if r.verdict is Verdict.UNKNOWN)

    def __str__(self) -> str:
        head = (
            f"{self.verdict.value}: {len(self.keys)} keys, "
            f"{len(self.violations)} violating, {len(self.unknown)} unknown"
        )
        return "\n".join([head, *(str(r) for r in self.keys if r.verdict is not Verdict.OK)])


def check_history(
    history: History | Iterable[Op], *, max_steps: int = DEFAULT_MAX_STEPS
) -> CheckResult:
    """Check every key of `history` independently; see the module docstring."""
    by_key: dict[str, list[Op]] = {}
    for op in history:
        if op.outcome is Outcome.OK and op.complete is None:
            raise ValueError(f"op #{op.id} is OK but has no complete time")
        by_key.setdefault(op.key, []).append(op)
    return CheckResult(
        tuple(_Search(k, _relevant(by_key[k])).run(max_steps) for k in sorted(by_key))
    )


def _legal(op: Op, state: str | None) -> tuple[bool, str | None]:
    """(may `op` take effect in `state`, the state after it)."""
    match op.kind:
        case OpKind.PUT:
            return True, op.value
        case OpKind.DELETE:
            return op.existed is None or op.existed == (state is not None), None
        case OpKind.GET:
            return op.value == state, state


def _relevant(ops: list[Op]) -> list[Op]:
    """The ops that constrain the search: see the module docstring."""
    done = [op for op in ops if op.outcome is Outcome.OK]
    seen = {op.value for op in done if op.kind is OpKind.GET}
    existed = {op.existed for op in done if op.kind is OpKind.DELETE and op.existed is not None}

    def observable(op: Op) -> bool:
        after = op.value if op.kind is OpKind.PUT else None
        return after in seen or (after is not None) in existed

    maybe = [op for op in ops if op.outcome is Outcome.UNKNOWN and op.kind is not OpKind.GET]
    return done + [op for op in maybe if observable(op)]


class _Search:
    """The search over one key's ops (indexed 0..n-1): event list, placed prefix, counters."""

    def __init__(self, key: str, ops: list[Op]) -> None:
        self.key, self.ops = key, ops
        self.required = sum(op.outcome is Outcome.OK for op in ops)
        # Events by time, calls (0) before returns (1) at equal times. Node 0 is the list's head
        # sentinel, nodes 1..m the events; optional ops have no return node (ret = 0).
        events = sorted(
            [(op.invoke, 0, i) for i, op in enumerate(ops)]
            + [(op.complete, 1, i) for i, op in enumerate(ops) if op.complete is not None]
        )
        m = len(events)
        self.op_of = [-1] + [i for _, _, i in events]
        self.is_call = [False] + [kind == 0 for _, kind, _ in events]
        self.call, self.ret = [0] * len(ops), [0] * len(ops)
        for node in range(1, m + 1):
            (self.call if self.is_call[node] else self.ret)[self.op_of[node]] = node
        self.nxt = [*range(1, m + 1), 0]  # circular: the last event links back to the head
        self.prv = [m, *range(m)]
        self.forced = [
            op.kind is OpKind.GET or (op.kind is OpKind.DELETE and op.existed is False)
            for op in ops
        ]
        self.want = [op.value if op.kind is OpKind.GET else None for op in ops]  # forced: needs
        self.produce = [op.value if op.kind is OpKind.PUT else None for op in ops]  # write: sets
        # Unplaced forced ops needing each state; unplaced (non-forced) writes producing it.
        self.need = Counter(w for w, f in zip(self.want, self.forced, strict=True) if f)
        self.supply = Counter(p for p, f in zip(self.produce, self.forced, strict=True) if not f)
        self.state: str | None = None
        self.placed = 0  # bitset of placed op indices
        self.placed_required = 0  # <= required
        self.stack: list[tuple[int, str | None, list[int], int]] = []  # op, state, cands, pos
        self.memo: set[tuple[int, str | None]] = set()  # (placed, state) already explored

    def run(self, max_steps: int) -> KeyResult:
        best, witness = -1, None  # deepest dead end so far
        cands, pos, steps = self.candidates(), 0, 0
        while self.placed_required < self.required:
            steps += 1
            if steps > max_steps:
                return KeyResult(self.key, Verdict.UNKNOWN, len(self.ops), steps)
            if pos < len(cands):
                pos += 1
                if self.place(cands[pos - 1], cands, pos):
                    cands, pos = self.candidates(), 0
                continue
            if len(self.stack) > best:  # dead end: the first pending return cannot be reached
                best, witness = len(self.stack), self.witness()
            while True:  # undo forced moves, then the last real choice
                if not self.stack:
                    return KeyResult(self.key, Verdict.VIOLATION, len(self.ops), steps, witness)
                i, cands, pos = self.unplace()
                if not self.forced[i]:
                    break
        return KeyResult(self.key, Verdict.OK, len(self.ops), steps)

    def candidates(self) -> list[int]:
        """Ops that may go next, in the order to try them: a legal forced op alone; else the op
        of the first pending return, then the other ops invoked before it, in call order."""
        node, calls = self.nxt[0], []
        while self.is_call[node]:
            calls.append(self.op_of[node])
            node = self.nxt[node]
        for i in calls:
            if self.forced[i] and _legal(self.ops[i], self.state)[0]:
                return [i]
        if not node:  # the list's end: only optional ops remain
            return calls
        urgent = self.op_of[node]
        return [urgent, *(i for i in calls if i != urgent)]

    def place(self, i: int, cands: list[int], pos: int) -> bool:
        legal, after = _legal(self.ops[i], self.state)
        if not legal or (self.placed | 1 << i, after) in self.memo:
            return False
        if after != self.state and self.need[self.state] and not self.supply[self.state]:
            return False  # starvation: see the module docstring
        if self.forced[i]:
            self.need[after] -= 1
        else:
            self.supply[after] -= 1
        self.placed |= 1 << i
        self.memo.add((self.placed, after))
        self.stack.append((i, self.state, cands, pos))
        self.state = after
        self.placed_required += self.ret[i] != 0
        self._unlink(self.call[i])
        if self.ret[i]:
            self._unlink(self.ret[i])
        return True

    def unplace(self) -> tuple[int, list[int], int]:
        """Undo the last placement; returns it with the candidate list it was taken from."""
        i, self.state, cands, pos = self.stack.pop()
        if self.forced[i]:
            self.need[self.want[i]] += 1
        else:
            self.supply[self.produce[i]] += 1
        self.placed &= ~(1 << i)
        self.placed_required -= self.ret[i] != 0
        if self.ret[i]:  # relink in the reverse order of unlinking
            self._relink(self.ret[i])
        self._relink(self.call[i])
        return i, cands, pos

    def _unlink(self, x: int) -> None:
        self.nxt[self.prv[x]] = self.nxt[x]
        self.prv[self.nxt[x]] = self.prv[x]

    def _relink(self, x: int) -> None:
        self.nxt[self.prv[x]] = x
        self.prv[self.nxt[x]] = x

    def witness(self) -> Witness:
        node, concurrent = self.nxt[0], []
        while self.is_call[node]:
            concurrent.append(self.ops[self.op_of[node]])
            node = self.nxt[node]
        stuck = self.ops[self.op_of[node]]  # a dead end always has a pending return
        stranded: list[Op] = []
        if self.need[self.state] and not self.supply[self.state]:
            stranded = [
                op
                for i, op in enumerate(self.ops)
                if self.forced[i] and not self.placed >> i & 1 and self.want[i] == self.state
            ]
        return Witness(
            key=self.key,
            state=self.state,
            placed=len(self.stack),
            required=self.required,
            prefix=tuple(self.ops[i] for i, *_ in self.stack[-_PREFIX_SHOWN:]),
            stuck=stuck,
            concurrent=tuple(op for op in concurrent if op is not stuck),
            stranded=tuple(stranded),
        )
