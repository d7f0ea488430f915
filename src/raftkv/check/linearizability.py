"""Per-key linearizability checking of a key-value history (Wing & Gong's search, Lowe's memo).

Model: every key is an independent register holding `str | None` (None = absent, the initial
state), so a history is linearizable iff each key's sub-history is (locality, Herlihy & Wing),
and keys are checked one by one. `put(v)` sets v; `delete` sets None and, if it reported
`existed`, that must equal "the register was not None"; `get` must observe the current value.

What enters the search for a key:
- OK ops, each to be placed once between its invoke and its complete;
- UNKNOWN puts/deletes as *optional* ops: placeable any time after invoke, or never (no return
  event);
- FAIL ops and UNKNOWN gets are dropped: they took no effect / tell nothing.
Real-time order is strict: op A precedes B only if A.complete < B.invoke. At equal times the call
sorts first, so touching intervals count as concurrent (a coarse clock never causes a false alarm).

First, `readfrom.impossible_read`: an observation that no write can explain (a stale read, a
read of a value never or only unsuccessfully written) refutes the key in O(n log n).

Then the search (Wing & Gong's, with Lowe's memo, "Testing for linearizability", 2017, §3):
call and return events sit in one doubly linked list in time order; the ops that may go next are
those whose call precedes the first remaining return. Place one (legal in the current state, and
(placed-set bitset, new state) not seen before), lift its events out of the list, recurse; when
none works, backtrack. Success once every OK op is placed: optional ops left in the list can
always be left out. Refinements, each sound (they only cut configurations with no
completion), keep it fast on real histories:
- the op of the first return is tried first: it is the one that must be placed soonest;
- an optional op is tried only while some unplaced op could observe the state it makes (a get of
  its value; a delete whose `existed` matches; a CAS expecting it — an optional CAS too, which
  may in turn be observed: an unknown delete, then an unknown CAS from absent, then a get of
  its value): removing an
  unobserved write from a valid order leaves it valid, and each optional op kept in play could
  double the space to search;
- a *forced* op (one that never changes the state it is legal in: a get, or a delete that saw no
  key) is placed alone when legal: if any order extends the prefix, one placing it right now does,
  since nothing pending must precede it; so when it fails, its prefix has failed too;
- *starvation*: a configuration is dead when an unplaced forced op needs a state other than the
  current one that no unplaced write can produce (with unique values, this catches a stale read
  as soon as it becomes one, and a read of a value never written at once).
The deepest point reached is kept as the witness of a failure; a step budget per key turns a
blow-up into the distinct verdict UNKNOWN.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from raftkv.check.history import Op, OpKind, Outcome
from raftkv.check.model import is_forced, makes, step, wants
from raftkv.check.readfrom import impossible_read
from raftkv.check.result import CheckResult, KeyResult, Verdict, Witness

DEFAULT_MAX_STEPS = 1_000_000  # per key: some seconds of search at most
_PREFIX_SHOWN = 3  # placed ops shown before the stuck point


def check_history(history: Iterable[Op], *, max_steps: int = DEFAULT_MAX_STEPS) -> CheckResult:
    """Check every key of `history` (a `History` or any ops) independently; `max_steps` bounds
    the search per key. Raises ValueError on a malformed op (as a loaded file may hold)."""
    by_key: dict[str, list[Op]] = {}
    for op in history:
        if op.outcome is Outcome.OK and (op.complete is None or op.complete < op.invoke):
            raise ValueError(f"op #{op.id} is OK but does not complete after its invoke")
        if op.existed is not None and (op.kind, op.outcome) != (OpKind.DELETE, Outcome.OK):
            raise ValueError(f"op #{op.id}: only a completed delete reports existed")
        if op.outcome is Outcome.OK or (
            op.outcome is Outcome.UNKNOWN and op.kind is not OpKind.GET
        ):
            by_key.setdefault(op.key, []).append(op)  # FAIL ops and UNKNOWN gets tell nothing
    return CheckResult(tuple(_check_key(k, by_key[k], max_steps) for k in sorted(by_key)))


def _check_key(key: str, ops: list[Op], max_steps: int) -> KeyResult:
    found = impossible_read(ops)
    if found is None:
        return _Search(key, ops).run(max_steps)
    reader, overwritten = found
    return KeyResult(
        key, Verdict.VIOLATION, len(ops), 0, Witness(key, reader, overwritten=overwritten)
    )


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
        self.forced = [is_forced(op) for op in ops]
        self.want = [wants(op) for op in ops]
        self.produce = [makes(op) for op in ops]
        # Unplaced forced ops needing each state; unplaced (non-forced) writes producing it;
        # the states needed but no longer producible (the configuration is dead unless that
        # is the current state, and only it).
        # A required CAS needs its expected state too (it can only be placed there), so it
        # makes optional writes of that state worth trying and counts for starvation.
        self.needs = [
            f or (op.kind is OpKind.CAS and op.outcome is Outcome.OK)
            for f, op in zip(self.forced, ops, strict=True)
        ]
        self.need_of = [
            w if f else op.expect for w, f, op in zip(self.want, self.forced, ops, strict=True)
        ]
        self.need = Counter(u for u, n in zip(self.need_of, self.needs, strict=True) if n)
        self.supply = Counter(p for p, f in zip(self.produce, self.forced, strict=True) if not f)
        self.hopeless = {u for u, n in self.need.items() if n and not self.supply[u]}
        self.optional = [op.outcome is not Outcome.OK for op in ops]
        self.deletes_seeing_a_value = sum(op.existed is True for op in ops)  # unplaced
        # Unplaced optional CAS ops by the state they expect (they could observe it).
        self.cas_expecting = Counter(
            op.expect
            for op, o in zip(ops, self.optional, strict=True)
            if o and op.kind is OpKind.CAS
        )
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
            if self.forced[i] and step(self.ops[i], self.state)[0]:
                return [i]
        if not node:  # the list's end: only optional ops remain
            return []
        urgent = self.op_of[node]
        return [urgent, *(i for i in calls if i != urgent and self._useful(i))]

    def _useful(self, i: int) -> bool:
        """Whether op i may need placing: it is required, or some unplaced op could observe it."""
        u = self.produce[i]
        return (
            not self.optional[i]
            or self.need[u] > 0
            or self.cas_expecting[u] > 0
            or (u is not None and self.deletes_seeing_a_value > 0)
        )

    def place(self, i: int, cands: list[int], pos: int) -> bool:
        legal, after = step(self.ops[i], self.state)
        if not legal or (self.placed | 1 << i, after) in self.memo:
            return False
        self._count(i, -1)
        if len(self.hopeless) > (after in self.hopeless):  # starvation: see the module docstring
            self._count(i, +1)
            return False
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
        self._count(i, +1)
        self.placed &= ~(1 << i)
        self.placed_required -= self.ret[i] != 0
        if self.ret[i]:  # relink in the reverse order of unlinking
            self._relink(self.ret[i])
        self._relink(self.call[i])
        return i, cands, pos

    def _count(self, i: int, delta: int) -> None:
        """Op i leaves (-1) or rejoins (+1) the unplaced ops: update need, supply, hopeless."""
        self.deletes_seeing_a_value += delta * (self.ops[i].existed is True)
        if self.optional[i] and self.ops[i].kind is OpKind.CAS:
            self.cas_expecting[self.ops[i].expect] += delta
        if self.needs[i]:
            u = self.need_of[i]
            self.need[u] += delta
            if not self.need[u]:
                self.hopeless.discard(u)
            elif not self.supply[u]:
                self.hopeless.add(u)
        if not self.forced[i]:
            u = self.produce[i]
            self.supply[u] += delta
            if not self.supply[u] and self.need[u]:
                self.hopeless.add(u)
            else:
                self.hopeless.discard(u)

    def _unlink(self, x: int) -> None:
        self.nxt[self.prv[x]] = self.nxt[x]
        self.prv[self.nxt[x]] = self.prv[x]

    def _relink(self, x: int) -> None:
        self.nxt[self.prv[x]] = x
        self.prv[self.nxt[x]] = x

    def witness(self) -> Witness:
        node, concurrent = self.nxt[0], []
        while self.is_call[node]:
            concurrent.append((self.op_of[node], self.ops[self.op_of[node]]))
            node = self.nxt[node]
        stuck = self.ops[self.op_of[node]]  # a dead end always has a pending return
        stranded = [
            op
            for i, op in enumerate(self.ops)
            if self.forced[i] and not self.placed >> i & 1 and self.want[i] in self.hopeless
        ]
        return Witness(
            key=self.key,
            stuck=stuck,
            state=self.state,
            placed=len(self.stack),
            required=self.required,
            prefix=tuple(self.ops[i] for i, *_ in self.stack[-_PREFIX_SHOWN:]),
            concurrent=tuple(op for i, op in concurrent if op is not stuck and self._useful(i)),
            stranded=tuple(stranded),
        )
