"""A chaos run's report: the verdicts, the witnesses, the availability timeline, as text or JSON.

Rules:
- `anomalies` lists one headline per problem found; the run passes iff it is empty and the
  checker reached a verdict on every key. The exit code follows (`exit_code`): 0 pass,
  1 anomaly, 3 inconclusive (the checker's step budget ran out on some key).
- A witness is printed for every anomaly, kept short: the checker's own witness (already
  minimal: the stuck op and the few around it), the first lost writes, the diverging replicas,
  the first unexpected replies, a crashed node's log tail.
- The JSON form holds the same facts (and the full timeline) for scripts; ops appear in the
  history's own encoding.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec

from raftkv.chaos.analysis import Failover, LostWrite, Second, StaleRead
from raftkv.chaos.cluster import Crash
from raftkv.chaos.membership import MembershipSummary
from raftkv.check import CheckResult, Op, Outcome

EXIT_PASS: Final = 0
EXIT_ANOMALY: Final = 1
EXIT_HARNESS: Final = 2  # the run itself could not be carried out
EXIT_INCONCLUSIVE: Final = 3
_SHOWN: Final = 5
_BAR: Final = 40  # width of the timeline's bars


@dataclass(frozen=True, slots=True)
class ChaosReport:
    scenario: str
    seed: int
    duration_s: float
    nodes: tuple[str, ...]
    clients: int
    keys: int
    faults_drawn_from: tuple[str, ...]
    work_dir: str
    history_path: str
    ops: Sequence[Op]
    reasons: Counter[str]
    failovers: Sequence[Failover]
    timeline: Sequence[Second]
    check: CheckResult
    lost: Sequence[LostWrite]
    divergence: Sequence[str]
    unexpected: Sequence[str]
    crashes: Sequence[Crash]
    stale: Sequence[StaleRead] = field(default=())  # on violating keys only
    problems: Sequence[str] = field(default=())  # the cluster failed to recover, and the like
    membership: MembershipSummary | None = None  # the membership scenario's changes and ledger

    @property
    def anomalies(self) -> list[str]:
        found = [f"linearizability: {len(self.check.violations)} key(s) violate"] * bool(
            self.check.violations
        )
        if self.lost:
            found.append(f"acknowledged writes lost: {len(self.lost)}")
        if self.divergence:
            found.append(f"replicas diverge after healing: {len(self.divergence)} key(s)")
        if self.unexpected:
            found.append(f"unexpected replies: {len(self.unexpected)}")
        if self.crashes:
            found.append(f"nodes crashed on their own: {len(self.crashes)}")
        return found + list(self.problems)

    @property
    def exit_code(self) -> int:
        if self.anomalies:
            return EXIT_ANOMALY
        return EXIT_INCONCLUSIVE if self.check.unknown else EXIT_PASS

    def outcome_counts(self) -> dict[str, int]:
        counts = Counter(op.outcome.value for op in self.ops)
        return {o.value: counts[o.value] for o in Outcome}

    def leader_failovers(self) -> list[float]:
        """Failover times of the faults that took the leader away but left a quorum."""
        return [
            f.seconds
            for f in self.failovers
            if f.fault.hit_leader and f.fault.quorum_kept and f.seconds is not None
        ]

    # -- text ---------------------------------------------------------------------------

    def render(self) -> str:
        out = [
            f"raftkv chaos {self.scenario}: seed {self.seed}, {self.duration_s:g} s, "
            f"{len(self.nodes)} nodes, {self.clients} clients, {self.keys} keys",
            f"faults drawn from: {', '.join(self.faults_drawn_from)}",
            f"data: {self.work_dir}",
            "",
            self._render_ops(),
            "",
            "faults (run clock, s)                     failover = fault start -> next OK write",
        ]
        for f in self.failovers:
            w = f.fault
            took = "no OK write before the end" if f.seconds is None else f"{f.seconds:.3f} s"
            out.append(f"  {w.start:6.1f}-{w.end:6.1f}  {w.name:<17} failover {took}")
            out.append(f"                  {w.detail}")
        if not self.failovers:
            out.append("  (none)")
        if self.membership is not None:
            out += ["", *self.membership.render()]
        out += ["", "availability (ops completed per second: ok (per node) | fail | unknown)"]
        out += self._render_timeline()
        out += ["", *self._render_verdicts()]
        return "\n".join(out)

    def _render_ops(self) -> str:
        counts = self.outcome_counts()
        top = ", ".join(f"{r} {n}" for r, n in self.reasons.most_common() if r != "ok")
        lines = [
            f"history: {len(self.ops)} ops (ok {counts['ok']}, fail {counts['fail']}, "
            f"unknown {counts['unknown']}) -> {self.history_path}"
        ]
        if top:
            lines.append(f"  not ok, by reason: {top}")
        lead = self.leader_failovers()
        if lead:
            lines.append(
                f"  failover after faults that hit the leader (a quorum left): median "
                f"{statistics.median(lead):.3f} s, max {max(lead):.3f} s ({len(lead)} faults)"
            )
        return "\n".join(lines)

    def _render_timeline(self) -> list[str]:
        peak = max((s.ok + s.fail + s.unknown for s in self.timeline), default=0) or 1
        lines = []
        for s in self.timeline:
            ok = round(_BAR * s.ok / peak)
            bad = round(_BAR * (s.fail + s.unknown) / peak)
            bar = ("#" * ok + "x" * bad).ljust(_BAR)
            faults = " <- " + ", ".join(s.faults) if s.faults else ""
            per_node = "/".join(str(n) for _, n in s.ok_by_node)
            counts = f"{s.ok:5d} ({per_node:>11}) |{s.fail:4d} |{s.unknown:4d}"
            lines.append(f"  {s.t:4d}s {counts}  {bar}{faults}")
        return lines

    def _render_verdicts(self) -> list[str]:
        check = self.check
        lines = [
            f"linearizability: {check.verdict.value}: {len(check.keys)} keys, "
            f"{len(check.violations)} violating, {len(check.unknown)} unknown"
        ]
        for r in check.unknown:
            lines.append(f"  {r}")
        if check.violations:
            # One witness is enough to see the bug; the JSON report holds every key's.
            lines += (f"  {line}" for line in str(check.violations[0]).splitlines())
            if len(check.violations) > 1:
                others = ", ".join(repr(r.key) for r in check.violations[1:])
                lines.append(f"  (also violating: {others}; witnesses in --json)")
        if self.stale:
            by_node = Counter(r.node for r in self.stale)
            in_fault = sum(bool(r.faults) for r in self.stale)
            lines.append(
                f"stale reads (no write explains them): {len(self.stale)}, by node: "
                + ", ".join(f"{n} {c}" for n, c in sorted(by_node.items()))
                + f"; {in_fault} during a fault"
            )
            lines += (f"  {r}" for r in self.stale[:_SHOWN])
        lines.append(f"acknowledged writes lost: {len(self.lost)}")
        lines += (f"  {w}" for w in self.lost[:_SHOWN])
        lines.append(
            "replicas after healing: "
            + ("consistent" if not self.divergence else f"{len(self.divergence)} diverge")
        )
        lines += (f"  {d}" for d in self.divergence[:_SHOWN])
        lines.append(f"unexpected replies: {len(self.unexpected)}")
        lines += (f"  {u}" for u in self.unexpected[:_SHOWN])
        lines.append(f"crashes: {len(self.crashes)}")
        for c in self.crashes[:_SHOWN]:
            lines.append(f"  {c.node_id} exited {c.returncode} at {c.at:.1f} s; log tail:")
            lines += (f"    {line}" for line in c.log_tail.splitlines())
        lines += (f"problem: {p}" for p in self.problems)
        anomalies = self.anomalies
        if anomalies:
            lines.append("RESULT: FAIL - " + "; ".join(anomalies))
        elif self.check.unknown:
            lines.append("RESULT: INCONCLUSIVE - the checker's step budget ran out")
        else:
            lines.append("RESULT: PASS")
        return lines

    # -- JSON ---------------------------------------------------------------------------

    def to_json(self) -> bytes:
        doc = {
            "scenario": self.scenario,
            "seed": self.seed,
            "duration_s": self.duration_s,
            "nodes": list(self.nodes),
            "clients": self.clients,
            "keys": self.keys,
            "faults_drawn_from": list(self.faults_drawn_from),
            "work_dir": self.work_dir,
            "history": self.history_path,
            "result": "pass"
            if self.exit_code == EXIT_PASS
            else ("fail" if self.exit_code == EXIT_ANOMALY else "inconclusive"),
            "exit_code": self.exit_code,
            "anomalies": self.anomalies,
            "ops": self.outcome_counts(),
            "reasons": dict(self.reasons.most_common()),
            "leader_failover_s": self.leader_failovers(),
            "faults": [
                {
                    "name": f.fault.name,
                    "detail": f.fault.detail,
                    "nodes": list(f.fault.nodes),
                    "leader": f.fault.leader,
                    "hit_leader": f.fault.hit_leader,
                    "quorum_kept": f.fault.quorum_kept,
                    "start": f.fault.start,
                    "end": f.fault.end,
                    "failover_s": f.seconds,
                }
                for f in self.failovers
            ],
            "timeline": [
                {
                    "t": s.t,
                    "ok": s.ok,
                    "fail": s.fail,
                    "unknown": s.unknown,
                    "ok_writes": s.ok_writes,
                    "ok_by_node": dict(s.ok_by_node),
                    "faults": list(s.faults),
                }
                for s in self.timeline
            ],
            "linearizability": {
                "verdict": self.check.verdict.value,
                "keys": {r.key: r.verdict.value for r in self.check.keys},
                "witnesses": [str(r) for r in self.check.violations],
            },
            "stale_reads": [
                {
                    "op": r.op,
                    "node": r.node,
                    "faults": [
                        {"name": w.name, "start": w.start, "nodes": w.nodes} for w in r.faults
                    ],
                }
                for r in self.stale
            ],
            "lost_writes": [
                {"key": w.key, "write": w.write, "final_read": w.final, "because": w.because}
                for w in self.lost
            ],
            "divergence": list(self.divergence),
            "unexpected": list(self.unexpected),
            "crashes": [
                {"node": c.node_id, "at": c.at, "returncode": c.returncode, "log_tail": c.log_tail}
                for c in self.crashes
            ],
            "problems": list(self.problems),
            "membership": self.membership.to_json() if self.membership is not None else None,
        }
        return msgspec.json.encode(doc)
