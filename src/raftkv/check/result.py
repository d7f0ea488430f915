"""The checker's results: a verdict per key and, for a violation, a readable witness.

Rules: plain frozen values; `str()` of any of them is the human-readable report.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from raftkv.check.history import Op
from raftkv.check.model import step
from raftkv.check.readfrom import Overwritten

_SHOWN = 12  # ops of one kind printed in a witness; the rest are counted


class Verdict(enum.Enum):
    OK = "ok"
    VIOLATION = "violation"
    UNKNOWN = "unknown"  # the step budget ran out: neither proven nor refuted


@dataclass(frozen=True, slots=True)
class Witness:
    """Why a key is not linearizable: where the deepest attempt to linearize it got stuck, or
    (if `overwritten` is set) an observation that no write can explain, found before searching."""

    key: str
    stuck: Op  # returned before any order of the ops around it could place it
    state: str | None = None  # register value after the longest consistent prefix found
    placed: int = 0  # ops in that prefix (optional ones included)
    required: int = 0  # OK ops, which every linearization must place
    prefix: tuple[Op, ...] = ()  # the last few ops of that prefix, in linearization order
    concurrent: tuple[Op, ...] = ()  # other unplaced ops invoked before `stuck` returned
    stranded: tuple[Op, ...] = ()  # unplaced ops needing a state no unplaced write produces
    overwritten: tuple[Overwritten, ...] | None = None  # see `readfrom`; `stuck` is the read

    def __str__(self) -> str:
        if self.overwritten is not None:
            return "\n".join(self._unexplained(self.overwritten))
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
            lines.append("  waiting for a state that no remaining write produces:")
            lines += (f"    {op}" for op in self.stranded[:_SHOWN])
        return "\n".join(lines)

    def _unexplained(self, overwritten: tuple[Overwritten, ...]) -> list[str]:
        lines = [f"key {self.key!r}: not linearizable; no write can explain", f"    {self.stuck}"]
        if not overwritten:
            lines.append("  and no op that may have taken effect writes that state")
        for w, x in overwritten[:_SHOWN]:
            lines.append(f"  it cannot read from {'the initial state' if w is None else w}")
            lines.append(
                "    invoked after it returned" if x is None else f"    overwritten by {x}"
            )
        return lines

    def _why(self, op: Op) -> str:
        legal, after = step(op, self.state)
        if not legal:
            return f"   <- illegal at {self.state!r}"
        if self.stranded and after != self.state:
            return "   <- legal, but leaves the ops below unplaceable"
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
        if self.violations:
            return Verdict.VIOLATION
        return Verdict.UNKNOWN if self.unknown else Verdict.OK

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
