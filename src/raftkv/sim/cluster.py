"""The simulated cluster: nodes, network, clients and faults driven by one event queue.

Rules:
- One event at a time: a message delivery, a node's tick, a write completion (fsync), a
  transport report, a client action or a fault. After each, touched nodes run their Ready loop
  (`SimNode.pump`) and the invariants look at every running node.
- Every random draw comes from a stream seeded by (seed, purpose), so the run is a function of
  the seed; nodes are visited in sorted id order; nothing depends on object identity or hashes.
- Each event adds one line to the trace; the run's hash is blake2b over those lines. A timer
  that fires with nothing to do (a stale tick, the timeout of a finished operation) is not an
  event: neither counted nor traced.
- A paused node (SIGSTOP) holds the events addressed to it and replays them on resume; a
  crashed node loses them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from raftkv.raft.config import RaftConfig
from raftkv.raft.errors import Unavailable
from raftkv.raft.messages import AnyMessage, InstallSnapshot
from raftkv.raft.rawnode import RawNode
from raftkv.raft.ready import Persist, Ready
from raftkv.raft.types import ConfState, Entry, Index, NodeId, ReadState, Role, Snapshot, Term
from raftkv.sim.invariants import Invariants, LogPos
from raftkv.sim.network import NetProfile, Network
from raftkv.sim.node import NodeFactory, SimNode
from raftkv.sim.scheduler import (
    TICK,
    ClientArrive,
    ClientInvoke,
    ClientTimeout,
    Deliver,
    Event,
    Heal,
    Nemesis,
    PersistDone,
    Report,
    Restart,
    Resume,
    Scheduler,
    Tick,
)
from raftkv.sim.workload import Workload, WorkloadOptions


@dataclass(frozen=True, slots=True)
class DiskProfile:
    fsync_min: int = 30
    fsync_mean: int = 250  # mean extra time of an fsync (exponential)
    slow_prob: float = 0.03  # a stalled fsync (a busy disk): the crash window widens
    slow_extra: int = 4 * TICK
    write_delay: int = 10  # a write without fsync


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    nodes: int = 3
    spare: int = 2  # ids that may join later as learners
    net: NetProfile = field(default_factory=NetProfile)
    disk: DiskProfile = field(default_factory=DiskProfile)
    workload: WorkloadOptions = field(default_factory=WorkloadOptions)
    election_ticks: int = 4
    pre_vote: bool = True
    check_quorum: bool = True
    max_append_bytes: int = 1 << 20
    max_inflight: int = 256
    clock_drift: float = 0.1  # node clocks tick at a rate in [1 - drift, 1 + drift]
    lease_ticks: int = 0  # leader lease (thesis §6.4.1); safe_lease_ticks(election, drift)


def _id(i: int) -> NodeId:
    return NodeId(f"n{i}")


class Cluster:
    def __init__(self, seed: int, opt: ClusterOptions, factory: NodeFactory | None = None) -> None:
        self.seed = seed
        self.opt = opt
        self.factory: NodeFactory = factory or RawNode
        self.sched = Scheduler()
        self.net = Network(self.rng("net"), opt.net)
        self.inv = Invariants()
        self.workload = Workload(self.rng("clients"), self.sched, opt.workload)
        self._disk_rng = self.rng("disk")
        self._clock_rng = self.rng("clock")
        self.voters0 = tuple(_id(i) for i in range(1, opt.nodes + 1))
        self.spares = [_id(i) for i in range(opt.nodes + 1, opt.nodes + 1 + opt.spare)]
        self.bootstrap = ConfState(voters=self.voters0)
        self.nodes: dict[NodeId, SimNode] = {}  # every node ever started, in id order
        self._rate: dict[NodeId, float] = {}  # clock rate per node
        self._tick_chain: dict[NodeId, int] = {}
        self._last_tick: dict[NodeId, int] = {}  # time of the node's last tick (or boot)
        self.events = 0
        self.trace_lines: list[str] | None = None  # kept only when tracing
        self.last_line = ""
        self._lead_commit: dict[NodeId, tuple[tuple[int, int], int]] = {}  # (epoch, term), commit
        self._hash = hashlib.blake2b(digest_size=16)
        self.stats: dict[str, int] = {}
        self._touched: list[NodeId] = []
        self.nemesis: Callable[[Cluster, Nemesis], str] | None = None  # the fault injector, if any
        self.on_new_leader: Callable[[Cluster, SimNode], str] | None = None  # reactive faults
        for nid in self.voters0:
            self.add_node(nid)

    def rng(self, purpose: str) -> random.Random:
        return random.Random(f"{self.seed}/{purpose}")

    def count(self, stat: str, n: int = 1) -> None:
        self.stats[stat] = self.stats.get(stat, 0) + n

    # -- membership of the simulation ---------------------------------------------------------
    def add_node(self, nid: NodeId) -> SimNode:
        """Create a node (bootstrapped with the initial configuration) and boot it."""
        o = self.opt
        config = RaftConfig(
            id=nid,
            election_ticks=o.election_ticks,
            pre_vote=o.pre_vote,
            check_quorum=o.check_quorum,
            max_append_bytes=o.max_append_bytes,
            max_inflight=o.max_inflight,
            lease_ticks=o.lease_ticks,
        )
        node = SimNode(nid, config, self.bootstrap, self.factory, self)
        self.nodes = dict(sorted({**self.nodes, nid: node}.items()))
        self._rate[nid] = 1.0 + self._clock_rng.uniform(-o.clock_drift, o.clock_drift)
        self.boot(node)
        return node

    def boot(self, node: SimNode) -> None:
        node.start(self.rng(f"core/{node.id}/{node.epoch + 1}"))
        self._last_tick[node.id] = self.sched.now  # a new core's clock starts now
        self._start_ticking(node)

    def _start_ticking(self, node: SimNode) -> None:
        if node.id in self._last_tick and node.core is not None:
            # Back from a pause: the driver notices its stall before serving anything (the
            # asyncio driver counts late tick periods): the lease clock must not have stood
            # still while the rest of the cluster moved on (thesis §6.4.1).
            gap = self.sched.now - self._last_tick[node.id]
            node.core.clock_skipped(-(-gap // self._period(node.id)))
        self._last_tick[node.id] = self.sched.now
        chain = self._tick_chain.get(node.id, 0) + 1
        self._tick_chain[node.id] = chain
        self.sched.push(self._clock_rng.randrange(1, self._period(node.id)), Tick(node.id, chain))

    def _period(self, nid: NodeId) -> int:
        return int(TICK * self._rate[nid])

    def running(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.running]

    def leader(self) -> SimNode | None:
        """The running leader of the highest term, if any."""
        best: SimNode | None = None
        best_term = -1
        for n in self.running():
            st = n.the_core().status()
            if st.role is Role.LEADER and st.term > best_term:
                best, best_term = n, st.term
        return best

    def conf(self) -> ConfState:
        """The configuration as the current leader (else any running node) applied it."""
        lead = self.leader()
        if lead is not None:
            return lead.the_core().status().conf
        confs = [n.the_core().status().conf for n in self.running()]
        return max(confs, key=lambda c: (len(c.voters), c.voters)) if confs else self.bootstrap

    # -- faults the nemesis calls -------------------------------------------------------------
    def crash(self, node: SimNode) -> str:
        survived = node.crash(self._disk_rng)
        self.inv.forget_incarnation(node.id)
        self.workload.on_crash(node.id)
        self.count("crashes")
        return f"crash {node.id} (kept {survived} unsynced writes)"

    def pause(self, node: SimNode, duration: int) -> str:
        node.paused = True
        self.sched.push(duration, Resume(node.id, node.epoch))
        self.count("pauses")
        return f"pause {node.id} for {duration}"

    def _resume(self, node: SimNode) -> None:
        node.paused = False
        held, node.held = node.held, []
        for i, ev in enumerate(held):
            self.sched.push(i + 1, ev)  # in arrival order, right away
        self._start_ticking(node)

    def resume_all(self) -> None:
        for n in self.nodes.values():
            if n.alive and n.paused:
                self._resume(n)

    def restart_all(self) -> None:
        for n in self.nodes.values():
            if not n.alive:
                self.boot(n)

    # -- Host: what nodes call ----------------------------------------------------------------
    def send(self, node: SimNode, msgs: tuple[AnyMessage, ...]) -> None:
        for msg in msgs:
            dst = msg.to
            if dst not in self.nodes or self.net.blocked(msg.from_, dst):
                self._lost(node, msg, self.opt.net.base_delay)
                continue
            delays = self.net.delays(msg.from_, dst)
            if not delays:
                self._lost(node, msg, self.opt.net.base_delay)
            for d in delays:
                self.sched.push(d, Deliver(msg, node.epoch))
            self.count("messages")

    def _lost(self, node: SimNode, msg: AnyMessage, delay: int) -> None:
        """The transport notices a failed send only for a snapshot or a cut link."""
        self.count("messages_lost")
        if isinstance(msg, InstallSnapshot):
            self.sched.push(delay, Report(node.id, node.epoch, msg.to, "snapshot_failed"))
        elif self.net.blocked(msg.from_, msg.to) and self.net.rng.random() < 0.1:
            # A transport notices a dead connection now and then, not on every message.
            self.sched.push(delay, Report(node.id, node.epoch, msg.to, "unreachable"))

    def schedule_persist(self, node: SimNode, sync: bool) -> None:
        d = self.opt.disk
        rng = self._disk_rng
        if sync:
            delay = d.fsync_min + int(rng.expovariate(1.0 / d.fsync_mean))
            if rng.random() < d.slow_prob:
                delay += rng.randrange(d.slow_extra)
        else:
            delay = d.write_delay
        self.sched.push(delay, PersistDone(node.id, node.epoch))

    def on_take_ready(self, node: SimNode, ready: Ready) -> None:
        self.inv.on_take_ready(node.id, node.storage, node.sm.applied, ready)

    def on_persist(self, node: SimNode, op: Persist) -> None:
        self.inv.on_persist(node.id, node.storage, op)

    def on_apply_snapshot(self, node: SimNode, snap: Snapshot, prev_applied: Index) -> None:
        self.inv.on_apply_snapshot(node.id, snap, prev_applied, node.sm.digest)
        self.inv.on_space(node.id, int(snap.meta.index), node.sm.space_figures())
        self.workload.on_snapshot(node.id, node.sm)
        self.count("snapshots_applied")

    def on_apply_entry(self, node: SimNode, entry: Entry, prev_applied: Index) -> None:
        self.inv.on_apply_entry(node.id, entry, prev_applied, node.sm.digest)
        self.inv.on_space(node.id, int(entry.index), node.sm.space_figures())
        self.workload.on_apply(node.id, entry, node.sm)

    def on_read_states(self, node: SimNode, states: tuple[ReadState, ...]) -> None:
        for problem in self.workload.on_read_states(node.id, states, node.sm):
            self.inv.fail("stale_read", problem)

    # -- the event loop -----------------------------------------------------------------------
    def step(self) -> bool:
        """Run one event; False when the queue is empty."""
        ev = self.sched.pop()
        if ev is None:
            return False
        self.inv.now, self.inv.event = self.sched.now, self.events + 1
        self._touched = []
        what = self._dispatch(ev)
        if what is None:
            return True  # stale timers and the like are not events
        self.events += 1
        for nid in self._touched:
            self.nodes[nid].pump()
        line = f"{self.events} {self.sched.now} {what}"
        terms = len(self.inv.leaders)
        for n in self.running():
            st = n.the_core().status()
            self.inv.observe(n.id, n.epoch, st.role, st.term, st.commit, st.applied)
            if n.id in self._touched:
                line += f" | {n.id} {st.role.value[0]}{st.term} c{st.commit} a{st.applied}"
            if len(self.inv.leaders) > terms:
                terms = len(self.inv.leaders)
                if self.on_new_leader is not None:
                    line += self.on_new_leader(self, n)
            if st.role is Role.LEADER:
                key = (n.epoch, int(st.term))
                if self._lead_commit.get(n.id, (key, -1)) != (key, st.commit):
                    self._lead_commit[n.id] = (key, st.commit)
                    self._check_commit_safe(n, st.commit, st.conf.voters)
        self.last_line = line
        self._hash.update(line.encode())
        self._hash.update(b"\n")
        if self.trace_lines is not None:
            self.trace_lines.append(line)
        return True

    def _check_commit_safe(self, lead: SimNode, commit: Index, voters: tuple[NodeId, ...]) -> None:
        if commit == 0:
            return
        term = lead.the_core().raft.log.term(commit)
        if term is None:
            return  # compacted at the leader: checked when it was committed
        durable: dict[NodeId, LogPos] = {}
        full: dict[NodeId, tuple[bool, LogPos]] = {}
        for v in voters:
            node = self.nodes.get(v)
            if node is None:
                continue
            disk = node.disk.durable
            durable[v] = (int(disk.term(disk.last_index())), int(disk.last_index()))
            full[v] = _holds(node, commit, term)
        self.inv.check_commit_safe(lead.id, commit, term, durable, full)

    def touch(self, node: SimNode) -> None:
        if node.id not in self._touched:
            self._touched.append(node.id)

    def trace_hash(self) -> str:
        return self._hash.hexdigest()

    def _hold(self, node: SimNode, ev: Event) -> bool:
        """A paused node keeps what arrives for it (as its socket buffers would)."""
        if node.paused:
            node.held.append(ev)
            return True
        return False

    def _dispatch(self, ev: Event) -> str | None:
        match ev:
            case Deliver(msg=msg):
                node = self.nodes.get(msg.to)
                name = f"{type(msg).__name__} {msg.from_}->{msg.to} t{msg.term}"
                if isinstance(msg, InstallSnapshot):
                    self._snapshot_delivered(msg, ev.src_epoch)
                if node is None or not node.alive or self.net.blocked(msg.from_, msg.to):
                    return f"lost {name}"
                if self._hold(node, ev):
                    return f"held {name}"
                node.the_core().step(msg)
                self.touch(node)
                return name
            case Tick(node=nid, chain=chain):
                node = self.nodes[nid]
                if chain != self._tick_chain[nid] or not node.running:
                    return None  # a no-op: not an event
                node.the_core().tick()
                self._last_tick[nid] = self.sched.now
                self.touch(node)
                self.sched.push(self._period(nid), Tick(nid, chain))
                return f"tick {nid}"
            case PersistDone(node=nid, epoch=epoch):
                node = self.nodes[nid]
                if epoch != node.epoch or not node.alive:
                    return None  # a no-op: not an event
                if self._hold(node, ev):
                    return f"persisted {nid} (held)"
                node.persist_done()
                self.touch(node)
                return f"persisted {nid}"
            case Report(node=nid, epoch=epoch, target=target, what=what):
                node = self.nodes[nid]
                if epoch != node.epoch or not node.alive:
                    return None  # a no-op: not an event
                if self._hold(node, ev):
                    return f"report {what} {nid} (held)"
                core = node.the_core()
                if what == "unreachable":
                    core.report_unreachable(target)
                else:
                    core.report_snapshot(target, what == "snapshot_ok")
                self.touch(node)
                return f"report {what} {nid}->{target}"
            case ClientInvoke(client=cid):
                out = self.workload.invoke(cid, list(self.nodes))
                return None if out is None else f"client {cid} {out}"
            case ClientArrive(client=cid, op_id=op_id, node=nid):
                node = self.nodes[nid]
                if not node.alive:
                    self.workload.arrive_down(cid, op_id)
                    return f"client {cid} op {op_id} at {nid}: down"
                if self._hold(node, ev):
                    return f"client {cid} op {op_id} at {nid}: held"
                out = self.workload.arrive(
                    cid, op_id, node.the_core(), self.inv.max_commit, node.sm
                )
                for problem in self.workload.stale:
                    self.inv.fail("stale_read", problem)
                self.workload.stale.clear()
                self.touch(node)
                return f"client {cid} op {op_id} at {nid}: {out}"
            case ClientTimeout(client=cid, op_id=op_id):
                if not self.workload.timeout(cid, op_id):
                    return None
                return f"client {cid} op {op_id} timeout"
            case Nemesis():
                if self.nemesis is None:
                    return None  # faults are over
                return "nemesis " + self.nemesis(self, ev)
            case Resume(node=nid, epoch=epoch):
                node = self.nodes[nid]
                if epoch != node.epoch or not node.alive or not node.paused:
                    return None  # a no-op: not an event
                held = len(node.held)
                self._resume(node)
                return f"resume {nid} ({held} held)"
            case Heal(partition_id=pid):
                self.net.heal(pid)
                return f"heal partition {pid}"
            case Restart(node=nid):
                node = self.nodes[nid]
                if node.alive:
                    return None  # a no-op: not an event
                self.boot(node)
                self.touch(node)
                return f"restart {nid}"
        raise AssertionError(f"unknown event {ev!r}")

    def _snapshot_delivered(self, msg: InstallSnapshot, src_epoch: int) -> None:
        dst = self.nodes.get(msg.to)
        ok = dst is not None and dst.alive and not self.net.blocked(msg.from_, msg.to)
        what = "snapshot_ok" if ok else "snapshot_failed"
        self.sched.push(1, Report(msg.from_, src_epoch, msg.to, what))


def _holds(node: SimNode, index: Index, term: Term) -> tuple[bool, LogPos]:
    """Whether the node's whole log (volatile tail included; the durable one when down) holds
    (index, term), and where it ends. The one place the simulator reads the core's log: a
    candidate campaigns with entries it has not yet persisted, and no Ready shows those."""
    if node.core is not None:
        log = node.core.raft.log
        if index < log.first_index():
            return True, (int(log.last_term()), int(log.last_index()))
        return log.term(index) == term, (int(log.last_term()), int(log.last_index()))
    disk = node.disk.durable
    pos = (int(disk.term(disk.last_index())), int(disk.last_index()))
    if index <= disk.snapshot().meta.index:
        return True, pos
    try:
        return disk.term(index) == term, pos
    except Unavailable:
        return False, pos
