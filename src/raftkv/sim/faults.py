"""The nemesis: faults injected at random times, each one event.

Faults: crash (losing unsynced writes) and later restart; pause (SIGSTOP) and resume; leader
isolation; random symmetric splits; one-way link cuts; membership changes (add a learner,
promote it, remove a node, add a removed node back); compaction (snapshot the applied state and
drop the log, so lagging nodes need InstallSnapshot); leadership transfer; forced campaigns;
a frozen leader (paused while cut off, waking up still cut off: the stale-read window);
with leader leases, a deposed leader (cut off, and at once a follower is made to campaign: the
moment a lease is only as good as the followers' promise not to elect anyone else, §6.4.1).
Reactive: a new leader may be cut off or crashed within a few message delays of winning
("flap"); in churn mode every flap isolates the new leader and heals the previous one, so
leaders with partial, uncommitted tails rotate — what Figure 8 needs.
Membership-heavy runs (`conf_burst`, `conf_on_new_leader`): a membership fault proposes
several changes back to back (the core must refuse all but the first: one at a time, thesis
§4.1), and a new leader may be asked for a change within a few message delays of winning,
before it has committed anything in its term (refused too: the raft-dev 2015 fix). A core
without those guards lets two changes be in flight; then a partition can leave disjoint
majorities, which the invariants catch (tests/sim/test_membership_guards.py).

Rules:
- Timed faults schedule their own end (Restart, Resume, Heal) so the cluster keeps moving.
- Targets are biased toward what breaks Raft implementations: the leader, and nodes whose
  write is still in flight (a crash right after sending, before the fsync completed).
- Choices draw from the nemesis' own rng and iterate ids sorted, so runs replay exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from raftkv.raft.errors import ProposalDropped
from raftkv.raft.types import ConfChange, ConfChangeKind, NodeId, Role
from raftkv.sim.cluster import Cluster
from raftkv.sim.node import SimNode
from raftkv.sim.scheduler import TICK, Heal, Nemesis, Restart

FAULTS = (
    "crash",
    "pause",
    "isolate_leader",
    "freeze_leader",
    "split",
    "one_way",
    "membership",
    "compact",
    "transfer",
    "campaign",
    "depose",
)


@dataclass(frozen=True, slots=True)
class FaultOptions:
    interval: int = 3 * TICK  # mean time between faults
    # Per FAULTS. `depose` is off by default (a zero weight last leaves every existing run's
    # draws as they were); lease runs turn it on (runner.lease_faults).
    weights: tuple[float, ...] = (3.0, 1.5, 2.0, 1.5, 1.5, 1.0, 1.5, 3.0, 1.0, 0.5, 0.0)
    flap_prob: float = 0.25  # chance a new leader is cut off or crashed as soon as it wins
    flap_within: int = 6  # strike within this many mean one-way message delays
    churn: bool = False  # flaps only isolate, and each heals the previous one: leaders rotate
    restart_after: tuple[int, int] = (TICK // 4, 10 * TICK)
    pause_for: tuple[int, int] = (TICK, 10 * TICK)
    partition_for: tuple[int, int] = (2 * TICK, 15 * TICK)
    max_voters: int = 5
    min_voters: int = 3
    conf_burst: int = 1  # membership changes proposed back to back by one membership fault
    conf_on_new_leader: float = 0.0  # chance a new leader is asked for a change right away
    conf_flap: float = 0.0  # chance a leader is cut off right after proposing a change


class FaultInjector:
    def __init__(self, rng: random.Random, options: FaultOptions) -> None:
        self.rng = rng
        self.opt = options
        self._flaps: list[int] = []  # partitions made by flaps (churn heals them in turn)

    def start(self, cluster: Cluster) -> None:
        cluster.nemesis = self
        cluster.on_new_leader = self.new_leader
        self._schedule(cluster)

    def new_leader(self, c: Cluster, lead: SimNode) -> str:
        """Leader flapping: a leader lost before its no-op replicates leaves an uncommitted
        tail in its term, the raw material of Figure 8 and of most log-repair bugs."""
        said = ""
        if self.opt.conf_on_new_leader and self.rng.random() < self.opt.conf_on_new_leader:
            net = c.opt.net
            delay = self.rng.randrange(0, 2 * (net.base_delay + net.mean_jitter))
            c.sched.push(delay, Nemesis(lead.id, lead.epoch, "conf"))
            said = f" ! conf change asked of {lead.id} in {delay}"
        return said + self._flap(c, lead)

    def _flap(self, c: Cluster, lead: SimNode) -> str:
        r = self.rng.random()
        if r >= self.opt.flap_prob:
            return ""
        action = "isolate" if self.opt.churn or r < self.opt.flap_prob / 2 else "crash"
        # Strike within a few message delays: some of its first appends get out, some not.
        net = c.opt.net
        delay = self.rng.randrange(0, self.opt.flap_within * (net.base_delay + net.mean_jitter))
        c.sched.push(delay, Nemesis(lead.id, lead.epoch, action))
        return f" ! flap: {action} {lead.id} in {delay}"

    def _strike(self, c: Cluster, ev: Nemesis) -> str:
        node = c.nodes.get(ev.target) if ev.target is not None else None
        if node is None or node.epoch != ev.epoch or not node.alive:
            return f"{ev.action} {ev.target}: gone"
        if ev.action == "conf":
            c.count("fault_conf_new_leader")
            return "conf on new leader: " + self._membership(c, node)
        c.count("fault_flap")
        if ev.action == "isolate":
            healed = ""
            if self.opt.churn:
                # The previous victim comes back as this one goes: old leaders with uncommitted
                # tails keep competing with each other.
                for old in self._flaps:
                    c.net.heal(old)
                healed = f", healed {self._flaps}"
                self._flaps = []
            pid = c.net.isolate(node.id, list(c.nodes), inbound=True, outbound=True)
            self._flaps.append(pid)
            self._timed_heal(c, pid)
            return f"flap: isolate {node.id} (partition {pid}){healed}"
        c.sched.push(self._span(self.opt.restart_after), Restart(node.id))
        return "flap: " + c.crash(node)

    def _schedule(self, cluster: Cluster) -> None:
        cluster.sched.push(int(self.rng.expovariate(1.0 / self.opt.interval)) + 1, Nemesis())

    def __call__(self, cluster: Cluster, ev: Nemesis) -> str:
        if ev.target is not None:
            return self._strike(cluster, ev)
        self._schedule(cluster)
        fault = self.rng.choices(FAULTS, weights=self.opt.weights)[0]
        cluster.count(f"fault_{fault}")
        act: Callable[[Cluster], str] = getattr(self, f"_{fault}")
        return fault + ": " + act(cluster)

    def _span(self, bounds: tuple[int, int]) -> int:
        return self.rng.randrange(bounds[0], bounds[1] + 1)

    def _pick(self, nodes: list[SimNode]) -> SimNode | None:
        return self.rng.choice(nodes) if nodes else None

    # -- process faults -----------------------------------------------------------------------
    def _crash(self, c: Cluster) -> str:
        running = c.running()
        r = self.rng.random()
        target: SimNode | None = None
        if r < 0.4:
            target = self._pick([n for n in running if n.pending is not None])
        elif r < 0.7:
            target = c.leader()
        target = target or self._pick(running)
        if target is None:
            return "nobody running"
        out = c.crash(target)
        c.sched.push(self._span(self.opt.restart_after), Restart(target.id))
        return out

    def _pause(self, c: Cluster) -> str:
        target = c.leader() if self.rng.random() < 0.5 else None
        target = target or self._pick(c.running())
        if target is None:
            return "nobody running"
        return c.pause(target, self._span(self.opt.pause_for))

    # -- network faults -----------------------------------------------------------------------
    def _timed_heal(self, c: Cluster, pid: int) -> None:
        c.sched.push(self._span(self.opt.partition_for), Heal(pid))

    def _isolate_leader(self, c: Cluster) -> str:
        lead = c.leader()
        if lead is None:
            return "no leader"
        pid = c.net.isolate(lead.id, list(c.nodes), inbound=True, outbound=True)
        self._timed_heal(c, pid)
        c.count("partitions")
        return f"isolate {lead.id} (partition {pid})"

    def _freeze_leader(self, c: Cluster) -> str:
        """The leader stalls (a long GC or VM pause) while cut off, and wakes up still cut off,
        believing it leads: the moment a read that skips the quorum check goes stale."""
        lead = c.leader()
        if lead is None:
            return "no leader"
        pause = self._span(self.opt.pause_for)
        pid = c.net.isolate(lead.id, list(c.nodes), inbound=True, outbound=True)
        c.sched.push(pause + self._span(self.opt.partition_for), Heal(pid))
        c.count("partitions")
        return c.pause(lead, pause) + f", isolated (partition {pid})"

    def _split(self, c: Cluster) -> str:
        ids = list(c.nodes)
        self.rng.shuffle(ids)
        cut = self.rng.randrange(1, len(ids))
        a, b = sorted(ids[:cut]), sorted(ids[cut:])
        pid = c.net.split(a, b)
        self._timed_heal(c, pid)
        c.count("partitions")
        return f"split {a} | {b} (partition {pid})"

    def _one_way(self, c: Cluster) -> str:
        target = self.rng.choice(list(c.nodes))
        inbound = self.rng.random() < 0.5
        pid = c.net.isolate(target, list(c.nodes), inbound=inbound, outbound=not inbound)
        self._timed_heal(c, pid)
        c.count("partitions")
        return f"cut {'into' if inbound else 'out of'} {target} (partition {pid})"

    # -- membership ---------------------------------------------------------------------------
    def _membership(self, c: Cluster, lead: SimNode | None = None) -> str:
        lead = lead or c.leader()
        if lead is None or lead.the_core().status().role is not Role.LEADER:
            return "no leader"
        conf = lead.the_core().status().conf
        done: list[str] = []
        chosen: set[NodeId] = set()
        voters = len(conf.voters)
        for _ in range(self.opt.conf_burst):
            # Later changes of a burst are planned as if the earlier ones had taken effect,
            # as an operator in a hurry would: a guarded core refuses them.
            members = set(conf.all_nodes())
            options: list[tuple[str, NodeId]] = []
            outsiders = [n for n in sorted({*c.nodes, *c.spares}) if n not in members]
            options += [("add_learner", nid) for nid in outsiders]
            if voters < self.opt.max_voters:
                options += [("promote", nid) for nid in conf.learners]
            if voters > self.opt.min_voters:
                options += [("remove", nid) for nid in conf.voters]
            options += [("remove", nid) for nid in conf.learners]
            options = [(a, n) for a, n in options if n not in chosen]
            if not options:
                break
            action, nid = self.rng.choice(options)
            chosen.add(nid)
            done.append(self._propose_change(c, lead, action, nid))
            voters += {"promote": 1, "remove": -1 if nid in conf.voters else 0}.get(action, 0)
        return "; ".join(done) or "nothing to change"

    def _propose_change(self, c: Cluster, lead: SimNode, action: str, nid: NodeId) -> str:
        kind = {
            "add_learner": ConfChangeKind.ADD_LEARNER,
            "promote": ConfChangeKind.ADD_VOTER,
            "remove": ConfChangeKind.REMOVE_NODE,
        }[action]
        try:
            term, index = lead.the_core().propose_conf_change(ConfChange(kind, nid))
        except ProposalDropped as e:
            c.count("conf_refused")
            return f"{action} {nid} refused by {lead.id}: {e}"
        c.touch(lead)
        c.count("conf_changes")
        if self.opt.conf_flap and self.rng.random() < self.opt.conf_flap:
            # Its change may reach only some nodes: the next leader inherits it uncommitted.
            net = c.opt.net
            delay = self.rng.randrange(0, self.opt.flap_within * (net.base_delay + net.mean_jitter))
            c.sched.push(delay, Nemesis(lead.id, lead.epoch, "isolate"))
        if action == "add_learner":
            node = c.nodes.get(nid)
            if node is None:
                c.add_node(nid)  # a fresh server, booted with the bootstrap configuration
            elif not node.alive:
                c.boot(node)  # a removed server comes back with its old disk
        return f"{action} {nid} via {lead.id} at {index} term {term}"

    # -- log and leadership -------------------------------------------------------------------
    def _compact(self, c: Cluster) -> str:
        targets = c.running() if self.rng.random() < 0.5 else [self._pick(c.running())]
        done: list[str] = []
        for n in targets:
            if n is None:
                continue
            snap = n.compact(keep=self.rng.randrange(0, 4))
            if snap is not None:
                done.append(f"{n.id}@{snap.meta.index}")
                c.count("compactions")
        return "compact " + (" ".join(done) or "nothing")

    def _transfer(self, c: Cluster) -> str:
        lead = c.leader()
        if lead is None:
            return "no leader"
        others = [v for v in lead.the_core().status().conf.voters if v != lead.id]
        if not others:
            return "no other voter"
        to = self.rng.choice(others)
        lead.the_core().transfer_leader(to)
        c.touch(lead)
        return f"{lead.id} -> {to}"

    def _depose(self, c: Cluster) -> str:
        """Cut the leader off and make one of its followers campaign at once. A correct
        follower refuses while it may still owe the old leader its lease promise (thesis
        §6.4.1), so the old leader's lease reads stay linearizable; one that campaigns anyway,
        or votes for it, elects a new leader while the old one still serves from its lease."""
        lead = c.leader()
        if lead is None:
            return "no leader"
        voters = lead.the_core().status().conf.voters
        followers = [n for n in c.running() if n.id != lead.id and n.id in voters]
        # The follower with the longest log: the one that could win (§5.4.1), so the run
        # tests the promise rather than the log check.
        target = max(followers, key=lambda n: n.the_core().status().last_index, default=None)
        pid = c.net.isolate(lead.id, list(c.nodes), inbound=True, outbound=True)
        self._timed_heal(c, pid)
        c.count("partitions")
        if target is None:
            return f"isolate {lead.id} (partition {pid}), no follower running"
        target.the_core().campaign()
        c.touch(target)
        return f"isolate {lead.id} (partition {pid}), {target.id} campaigns"

    def _campaign(self, c: Cluster) -> str:
        target = self._pick(c.running())
        if target is None:
            return "nobody running"
        target.the_core().campaign()
        c.touch(target)
        return target.id
