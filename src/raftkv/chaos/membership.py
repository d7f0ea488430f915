"""The `membership` scenario's conductor: grow, replace and shrink the cluster while the workload
and the nemesis run.

Rules:
- One cycle: grow N -> N+2 (each new node is a real `raftkv serve --join` process on an address
  of its own, promoted to voter by the leader once caught up), replace (kill -9 a voter, remove
  it through the API, a fresh node with a new id joins on an empty disk), shrink back to N
  (remove the leader -- it hands leadership over first -- then a member picked at random). The
  steps are separated by short random gaps so that the faults land in every phase. Cycles repeat
  while the run lasts; the one under way always finishes, so the run ends with N voters.
- Every change goes through the membership API, from the admin address (never cut), to a live
  member picked at random (followers forward it). The expected refusals are waited out and the
  same change asked again: 409 `change_in_progress`, `learner_not_ready`, `would_lose_quorum`;
  503 no leader / leader unreachable / transfer failed / stopping; 504; a lost connection. That
  is safe because every change is idempotent on the server (an add repeated with the same id and
  addresses, or the removal of a removed id, is answered as done). Any other answer (a 400, a
  404, a 500) is an anomaly: reported, and the conductor stops changing the membership.
- A step not done within `step_timeout_s` is a stuck change: an anomaly.
- Every restart (a kill fault's undo) names a live member with `--join`, the original members'
  too (`_rejoin_args`), as docs/membership.md tells operators to: a member down while every
  member it knew was removed has nobody else to learn the new members from, and without peer
  TLS it refuses the new leader for good (seen: an original member, restarted from the config
  file, missing 108 acknowledged ledger writes).
- A joining node's process is watched here until the leader lists it (`NodeProcess.joining`):
  a join refused on the way (`serve --join` exits 2, e.g. on a 409 while another change is
  pending) is started again, and counted as a retry. After that, its exits are crashes.
- The clients' node list follows the membership: a new node joins it once it is a voter (and
  ready, or after `READY_WAIT_S`); a removed node leaves it once the removal is acknowledged.
  The removed node must then stop by itself (exit 0); one still running after `STOP_WAIT_S` is
  stopped and reported (`not_stopped`, with its role and leader if it answers).
- The leader is sampled every `LEADER_SAMPLE_S` (highest term claimed), to count leader changes.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec

from raftkv.chaos import httpclient
from raftkv.chaos.cluster import Cluster, NodeSpec
from raftkv.chaos.ledger import LedgerResult
from raftkv.server.joining import MEMBER_FILE

STEP_TIMEOUT_S: Final = 300.0  # a loaded 2-core box takes 10-40 s to start a node
CALL_TIMEOUT_S: Final = 10.0  # a removal of the leader waits for a handover, then a commit
RETRY_PAUSE_S: Final = 0.25
READY_WAIT_S: Final = 15.0
STOP_WAIT_S: Final = 20.0
LEADER_SAMPLE_S: Final = 0.2
GAP_S: Final = (0.5, 2.5)
EXPECTED: Final[dict[int, frozenset[str]]] = {
    409: frozenset({"change_in_progress", "learner_not_ready", "would_lose_quorum"}),
    503: frozenset(
        {"no_leader", "not_leader", "leader_unreachable", "transfer_failed", "node_stopping"}
    ),
    504: frozenset({"timeout", "outcome_unknown"}),
}
_JSON: Final = {"Content-Type": "application/json"}


class MembershipAnomaly(Exception):
    """The membership API answered what it never should, or a change got stuck."""


def expected_refusal(status: int, code: object) -> bool:
    """True for the answers a membership change is retried after (module rules)."""
    return isinstance(code, str) and code in EXPECTED.get(status, frozenset())


@dataclass(slots=True)
class Change:
    """One membership step, as the report shows it."""

    kind: str  # "join", "replace" (kill and remove), "remove"
    what: str
    start: float  # run clock
    end: float | None = None
    retries: Counter[str] = field(default_factory=Counter)  # expected refusals, by code

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "what": self.what,
            "start": self.start,
            "end": self.end,
            "retries": dict(self.retries.most_common()),
        }

    def __str__(self) -> str:
        took = "not done" if self.end is None else f"{self.end - self.start:5.1f} s"
        retried = ", ".join(f"{c} {n}" for c, n in self.retries.most_common())
        line = f"{self.start:6.1f}  {took}  {self.what}"
        return line + (f"  (retried: {retried})" if retried else "")


class Conductor:
    """Runs membership cycles against `cluster`; keeps `client_nodes` (the list the workload
    picks from) in step with the membership."""

    def __init__(
        self,
        cluster: Cluster,
        client_nodes: list[NodeSpec],
        data_root: Path,
        rng: random.Random,
        now: Callable[[], float],
        say: Callable[[str], None],
        step_timeout_s: float = STEP_TIMEOUT_S,
    ) -> None:
        self.cluster, self.client_nodes, self.data_root = cluster, client_nodes, data_root
        self.rng, self.now, self.say = rng, now, say
        self.step_timeout_s = step_timeout_s
        self.base = len(cluster.ids)
        self.changes: list[Change] = []
        self.problems: list[str] = []
        self.not_stopped: list[str] = []
        self.join_exits: list[str] = []  # a joiner's exit before it was a member, with its log
        self.cycles = 0
        self.leaders: list[str] = []  # each leader seen, in order (a change appends one)
        self._next = max(int(n.rsplit("-", 1)[-1]) for n in cluster.nodes) + 1
        for node_id in cluster.ids:
            cluster.nodes[node_id].restart_args = functools.partial(self._rejoin_args, node_id)

    # -- the plan -----------------------------------------------------------------------------
    async def run(self, finish: asyncio.Event) -> None:
        """Cycles until `finish` is set (the cycle under way completes); anomalies are kept."""
        try:
            while True:
                await self._cycle()
                self.cycles += 1
                if finish.is_set():
                    return
        except MembershipAnomaly as exc:
            self.problems.append(f"membership: {exc}")
            self.say(f"membership anomaly: {exc}")

    async def _cycle(self) -> None:
        for _ in range(2):
            await self._gap()
            await self.grow()
        await self._gap()
        await self.replace()
        await self._gap()
        await self.shrink(leader=True)
        await self._gap()
        await self.shrink(leader=False)

    async def _gap(self) -> None:
        await asyncio.sleep(self.rng.uniform(*GAP_S))

    async def grow(self, what: str | None = None) -> None:
        node_id = f"node-{self._next}"
        self._next += 1
        spec = self.cluster.plan_node(node_id, self.rng)
        change = self._begin("join", what or f"join {node_id} ({spec.host})")
        proc = self.cluster.add_node(spec, lambda: self._join_args(spec))
        proc.joining = True
        proc.start()
        while True:
            code = proc.exit_code()
            if proc.joining and code is not None and not proc.killed:
                change.retries[f"join_exit_{code}"] += 1  # refused on the way: start it again
                why = " | ".join(proc.log_tail(3).splitlines())
                self.join_exits.append(f"{node_id} exited {code} while joining: {why}")
                self.say(self.join_exits[-1])
                await asyncio.sleep(RETRY_PAUSE_S)
                proc.start()
            role = (await self.members()).get(node_id)
            if role is not None and proc.running:
                proc.joining = False  # a member now: from here on, an exit is a crash
                if role == "voter":
                    break
            self._check_deadline(change, f"{node_id} not a voter")
            await asyncio.sleep(RETRY_PAUSE_S)
        await self._ready(node_id, READY_WAIT_S)
        self.client_nodes.append(spec)
        self._done(change)

    async def replace(self) -> None:
        victim = self.rng.choice(self._settled())
        change = self._begin("replace", f"replace {victim}: kill -9, remove")
        proc = self.cluster.nodes[victim]
        proc.leaving = True  # nobody restarts it
        proc.kill()
        await self._remove(victim, change)
        self._done(change)
        await self.grow(f"replace {victim}: join node-{self._next} on an empty disk")

    async def shrink(self, *, leader: bool) -> None:
        if leader:
            change = self._begin("remove", "remove the leader")
            victim = await self._leader(change)
            change.what = f"remove {victim} (the leader)"
        else:
            victim = self.rng.choice(self._settled())
            change = self._begin("remove", f"remove {victim}")
        proc = self.cluster.nodes[victim]
        proc.leaving = True
        await self._remove(victim, change)
        self._done(change)
        await self._wait_stopped(victim)

    # -- steps' parts -------------------------------------------------------------------------
    def _begin(self, kind: str, what: str) -> Change:
        change = Change(kind, what, self.now())
        self.changes.append(change)
        self.say(f"membership: {what}")
        return change

    def _done(self, change: Change) -> None:
        change.end = self.now()

    def _check_deadline(self, change: Change, words: str) -> None:
        if self.now() - change.start > self.step_timeout_s:
            retried = ", ".join(f"{c} {n}" for c, n in change.retries.most_common()) or "none"
            raise MembershipAnomaly(
                f"stuck: {change.what}: {words} after {self.step_timeout_s:g} s "
                f"(retried: {retried})"
            )

    def _settled(self) -> list[str]:
        """Members that are neither joining nor leaving (the ones a step may pick)."""
        nodes = self.cluster.nodes
        return [n for n in self.cluster.ids if not nodes[n].joining and not nodes[n].leaving]

    def _via(self, avoid: str | None = None) -> str | None:
        """A member to send a request to: running, not paused, not still joining."""
        nodes = self.cluster.nodes
        live = [
            n
            for n in self.cluster.ids
            if n != avoid and nodes[n].running and not (nodes[n].paused or nodes[n].joining)
        ]
        return self.rng.choice(live) if live else None

    def _join_args(self, spec: NodeSpec) -> list[str]:
        via = self._via(avoid=spec.node_id) or self.cluster.ids[0]
        contact = self.cluster.specs[via]
        return [
            "serve",
            "--node-id", spec.node_id,
            "--join", f"http://{contact.host}:{contact.http_port}",
            "--raft-address", f"{spec.host}:{spec.raft_port}",
            "--http-address", f"{spec.host}:{spec.http_port}",
            "--data-dir", str(self.data_root),
        ]  # fmt: skip

    def _rejoin_args(self, node_id: str) -> list[str] | None:
        """An original member's restart, as a joined one's: `serve --node-id ID --data-dir ROOT
        --join <a live member>` (module rules). None (the config file) until its member files
        exist: before that, --join would join it as a new node."""
        via = self._via(avoid=node_id)
        if via is None or not (self.data_root / node_id / MEMBER_FILE).exists():
            return None
        contact = self.cluster.specs[via]
        return [
            "serve",
            "--node-id", node_id,
            "--join", f"http://{contact.host}:{contact.http_port}",
            "--data-dir", str(self.data_root),
        ]  # fmt: skip

    async def _remove(self, victim: str, change: Change) -> None:
        await self.call(change, "DELETE", f"/cluster/members/{victim}")
        if self.cluster.specs[victim] in self.client_nodes:
            self.client_nodes.remove(self.cluster.specs[victim])
        self.cluster.retire(victim)

    async def _wait_stopped(self, node_id: str) -> None:
        """A removed node stops by itself (exit 0); stop it ourselves after `STOP_WAIT_S`."""
        proc = self.cluster.nodes[node_id]
        deadline = time.monotonic() + STOP_WAIT_S
        while proc.running and not proc.paused and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if proc.running and not proc.paused:
            status = await self.cluster.local_status(node_id)
            seen = (
                f"{node_id} (role {status.get('role')}, leader {status.get('leader_id')})"
                if status is not None
                else f"{node_id} (not answering: still starting?)"
            )
            self.not_stopped.append(seen)
            self.say(f"{seen} still runs {STOP_WAIT_S:g} s after its removal; stopping it")
        proc.stop()

    async def _leader(self, change: Change) -> str:
        while True:
            leader = await self.cluster.leader()
            if leader is not None and leader in self._settled():
                return leader
            change.retries["no_leader_known"] += 1
            self._check_deadline(change, "no leader known")
            await asyncio.sleep(RETRY_PAUSE_S)

    async def _ready(self, node_id: str, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                reply = await self.cluster.admin(node_id, "GET", "/ready", timeout_s=0.5)
            except (httpclient.NotSent, httpclient.MaybeSent):
                reply = None
            if reply is not None and reply.status == 200:
                return
            await asyncio.sleep(0.1)

    # -- the API ------------------------------------------------------------------------------
    async def call(
        self, change: Change, method: str, path: str, body: object = None
    ) -> dict[str, object]:
        """One change, asked again after every expected refusal until it is done."""
        data = msgspec.json.encode(body) if body is not None else b""
        while True:
            self._check_deadline(change, f"{method} {path} not answered 2xx")
            via = self._via()
            if via is None:
                change.retries["no_live_member"] += 1
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            try:
                reply = await self.cluster.admin(
                    via, method, path, body=data, headers=_JSON, timeout_s=CALL_TIMEOUT_S
                )
            except httpclient.NotSent:
                change.retries["not_sent"] += 1
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            except httpclient.MaybeSent:
                change.retries["connection_lost"] += 1
                continue
            doc = reply.json() or {}
            if reply.status in (200, 201):
                return doc
            code = doc.get("code")
            if not expected_refusal(reply.status, code):
                raise MembershipAnomaly(
                    f"{method} {path} via {via}: unexpected {reply.status} "
                    f"{reply.body[:300].decode('utf-8', 'replace')}"
                )
            change.retries[str(code)] += 1
            await asyncio.sleep(RETRY_PAUSE_S)

    async def members(self) -> dict[str, str]:
        """id -> role, in the leader's view ({} when no leader answers)."""
        via = self._via()
        if via is None:
            return {}
        try:
            reply = await self.cluster.admin(via, "GET", "/cluster/members", timeout_s=5.0)
        except (httpclient.NotSent, httpclient.MaybeSent):
            return {}
        doc = reply.json() or {}
        if reply.status != 200 or doc.get("view") != "leader":
            return {}
        found = doc.get("members")
        if not isinstance(found, list):
            return {}
        return {str(m.get("id")): str(m.get("role")) for m in found if isinstance(m, dict)}

    async def watch_leader(self) -> None:
        """Append every new leader to `leaders` (until cancelled)."""
        while True:
            leader = await self.cluster.leader()
            if leader is not None and (not self.leaders or self.leaders[-1] != leader):
                self.leaders.append(leader)
            await asyncio.sleep(LEADER_SAMPLE_S)

    async def final_check(self) -> None:
        """The members the cluster lists are the ones we kept, all voters, and every member's
        /cluster/status says so."""
        want = sorted(self.cluster.ids)
        deadline = time.monotonic() + 20.0
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            seen = await self.members()
            if sorted(seen) == want and set(seen.values()) == {"voter"}:
                break
            await asyncio.sleep(0.2)
        else:
            self.problems.append(f"membership: the cluster lists {seen or 'nothing'}, want {want}")
            return
        for node_id in want:
            try:
                reply = await self.cluster.admin(node_id, "GET", "/cluster/status", timeout_s=5.0)
            except (httpclient.NotSent, httpclient.MaybeSent) as exc:
                self.problems.append(f"membership: /cluster/status on {node_id}: {exc}")
                continue
            doc = reply.json() or {}
            if doc.get("cluster_size") != len(want):
                self.problems.append(
                    f"membership: {node_id}'s /cluster/status says cluster_size "
                    f"{doc.get('cluster_size')!r}, want {len(want)}"
                )

    def summary(self, ledger: LedgerResult | None) -> MembershipSummary:
        return MembershipSummary(
            cycles=self.cycles,
            changes=tuple(self.changes),
            leaders=tuple(self.leaders),
            not_stopped=tuple(self.not_stopped),
            join_exits=tuple(self.join_exits),
            final_members=tuple(sorted(self.cluster.ids)),
            ledger=ledger,
        )


@dataclass(frozen=True, slots=True)
class MembershipSummary:
    """What the conductor did, for the report."""

    cycles: int
    changes: tuple[Change, ...]
    leaders: tuple[str, ...]  # each leader seen, in order
    not_stopped: tuple[str, ...]  # removed nodes we had to stop
    join_exits: tuple[str, ...]  # joiners that exited before they were members, and why
    final_members: tuple[str, ...]
    ledger: LedgerResult | None

    @property
    def leader_changes(self) -> int:
        return max(0, len(self.leaders) - 1)

    def counts(self) -> Counter[str]:
        """How many steps of each kind were completed."""
        done = Counter(c.kind for c in self.changes if c.end is not None)
        return Counter({k: done[k] for k in ("join", "replace", "remove") if done[k]})

    def retries(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for c in self.changes:
            total.update(c.retries)
        return total

    def render(self) -> list[str]:
        counts = ", ".join(f"{k} {n}" for k, n in self.counts().items()) or "none"
        retried = ", ".join(f"{c} {n}" for c, n in self.retries().most_common()) or "none"
        lines = [
            f"membership: {self.cycles} full cycle(s); steps done: {counts}",
            f"  expected refusals retried: {retried}",
            f"  leader changes seen: {self.leader_changes} "
            f"({' -> '.join(self.leaders) or 'no leader seen'})",
            f"  final members: {', '.join(self.final_members)}",
        ]
        if self.not_stopped:
            lines.append(f"  removed but still running (stopped by us): {self.not_stopped}")
        lines += [f"  {e}" for e in self.join_exits[:5]]
        lines += [f"  {c}" for c in self.changes]
        if self.ledger is not None:
            lg = self.ledger
            lines.append(
                f"ledger: {lg.acknowledged} acknowledged writes of fresh keys, all on each of "
                f"{', '.join(lg.nodes)}: "
                + ("yes" if not lg.missing else f"NO, {len(lg.missing)} missing")
                + f"; {lg.refused} refused writes, present: {len(lg.refused_present)}"
            )
            lines += [f"  missing: {m}" for m in lg.missing[:5]]
            lines += [f"  refused yet present: {m}" for m in lg.refused_present[:5]]
        return lines

    def to_json(self) -> dict[str, object]:
        return {
            "cycles": self.cycles,
            "steps_done": dict(self.counts()),
            "retries": dict(self.retries().most_common()),
            "changes": [c.to_json() for c in self.changes],
            "leader_changes": self.leader_changes,
            "leaders": list(self.leaders),
            "not_stopped": list(self.not_stopped),
            "join_exits": list(self.join_exits),
            "final_members": list(self.final_members),
            "ledger": self.ledger.to_json() if self.ledger is not None else None,
        }
