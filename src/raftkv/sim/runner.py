"""`run_seed`: one deterministic simulation run, from a seed to a verdict.

A run: draw the cluster's shape from the seed (size, timeouts, PreVote/CheckQuorum, append and
window limits, disk and network speeds) and its fault profile (half the seeds churn leaders)
unless given; run `events` events with clients and faults; then wind down — heal the network,
resume and restart every node, stop new client operations, let the cluster converge (a liveness
check) — and check the client history for per-key linearizability.

Rules:
- The result is a function of (seed, events, options): the same inputs give the same trace hash.
- The first safety violation stops the run; an exception anywhere in the core or the simulator
  is reported as a violation too (a Raft node with a corrupt view must not limp on).
"""

from __future__ import annotations

import dataclasses
import random
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from raftkv.raft.lease import safe_lease_ticks
from raftkv.sim.cluster import Cluster, ClusterOptions, DiskProfile
from raftkv.sim.faults import FAULTS, FaultInjector, FaultOptions
from raftkv.sim.history import check_ops
from raftkv.sim.invariants import Violation
from raftkv.sim.network import NetProfile
from raftkv.sim.node import NodeFactory
from raftkv.sim.scheduler import TICK
from raftkv.sim.workload import WorkloadOptions

TAIL = 60  # trace lines kept for the report of a failing run
_Runner = Callable[[int | None, int | None], bool]


@dataclass(frozen=True, slots=True)
class SimOptions:
    cluster: ClusterOptions | None = None  # None: drawn from the seed (`draw_cluster`)
    faults: FaultOptions | None = None  # None: drawn from the seed (`draw_faults`)
    settle_ticks: int = 300  # time allowed to converge once faults stop
    settle_events: int = 20_000  # and events (a message storm must not run for long)
    check_liveness: bool = True
    check_linearizability: bool = True
    trace: bool = False  # keep every trace line in the result
    factory: NodeFactory | None = None  # builds each RawNode (tests plant bugs here)
    membership: bool = False  # faults drawn by `membership_faults` (when `faults` is None)
    leases: bool = False  # every drawn shape gets leader leases (`with_leases`)
    depose: bool = False  # leases, and faults aimed at deposed leaders (`depose_run`)


@dataclass(frozen=True, slots=True)
class SimResult:
    seed: int
    violations: tuple[Violation, ...]
    trace_hash: str
    stats: dict[str, int]
    trace: tuple[str, ...] = ()  # every line when tracing
    tail: tuple[str, ...] = ()  # the last lines before the end (or the violation)
    config: str = ""  # the drawn cluster shape, for the report

    @property
    def ok(self) -> bool:
        return not self.violations


def draw_cluster(seed: int) -> ClusterOptions:
    """A cluster shape drawn from the seed, so a sweep covers many configurations."""
    rng = random.Random(f"{seed}/shape")
    fsync_mean = rng.choice((60, 250, 800))
    return ClusterOptions(
        nodes=rng.choice((3, 3, 5)),
        net=NetProfile(
            mean_jitter=rng.choice((50, 150, 400)),
            drop_prob=rng.choice((0.0, 0.01, 0.05)),
            dup_prob=rng.choice((0.0, 0.01, 0.03)),
        ),
        disk=DiskProfile(fsync_mean=fsync_mean),
        workload=WorkloadOptions(clients=rng.choice((3, 4, 6))),
        election_ticks=rng.choice((3, 4, 4, 5, 8)),
        pre_vote=rng.random() < 0.8,
        check_quorum=rng.random() < 0.8,
        max_append_bytes=rng.choice((1, 64, 512, 1 << 20)),
        max_inflight=rng.choice((1, 4, 256)),
    )


def with_leases(shape: ClusterOptions, lease_ratio: float = 0.5) -> ClusterOptions:
    """The shape with the longest safe lease for its election timeout and clock drift, and a
    `lease_ratio` share of the gets asking for lease reads."""
    return dataclasses.replace(
        shape,
        lease_ticks=safe_lease_ticks(shape.election_ticks, shape.clock_drift),
        workload=dataclasses.replace(shape.workload, lease_ratio=lease_ratio),
    )


def depose_run(seed: int) -> tuple[ClusterOptions, FaultOptions]:
    """Shape and faults aimed at one moment of leader leases (thesis §6.4.1): the leader is
    cut off and at once its most up-to-date follower campaigns (`FaultInjector._depose`),
    while clients keep reading through leases. A correct cluster refuses that election until
    the followers' promise runs out, so the old leader's lease reads stay linearizable; a
    follower that does not keep its promise elects a new leader whose writes the old one's
    lease reads then miss. A quiet network and busy clients make the window reachable: under
    the general faults it is too rare to meet (tests/sim/test_lease_sim.py)."""
    rng = random.Random(f"{seed}/depose")
    shape = ClusterOptions(
        nodes=3,
        net=NetProfile(mean_jitter=rng.choice((50, 150)), drop_prob=0.0, slow_prob=0.0),
        disk=DiskProfile(fsync_mean=rng.choice((60, 250))),
        workload=WorkloadOptions(clients=rng.choice((6, 8)), think=TICK // 4),
        election_ticks=rng.choice((4, 5, 8, 10)),
    )
    weights = dict.fromkeys(FAULTS, 0.0)
    weights.update(depose=3.0, crash=0.5, pause=0.5)
    faults = FaultOptions(
        interval=4 * TICK, weights=tuple(weights[f] for f in FAULTS), flap_prob=0.0
    )
    return with_leases(shape, lease_ratio=0.9), faults


def draw_faults(seed: int) -> FaultOptions:
    """Half the seeds churn leaders (every new leader is cut off soon after it wins)."""
    rng = random.Random(f"{seed}/faults")
    if rng.random() < 0.5:
        return FaultOptions(interval=6 * TICK, flap_prob=0.9, churn=True)
    return FaultOptions(interval=rng.choice((2, 3, 6, 12)) * TICK)


def membership_faults(seed: int) -> FaultOptions:
    """Membership-heavy runs: changes are frequent, come in bursts of two, and are asked of new
    leaders before they commit in their term; partitions and crashes keep leaders moving."""
    rng = random.Random(f"{seed}/membership")
    weights = dict(zip(FAULTS, FaultOptions().weights, strict=True))
    weights.update(membership=8.0, split=3.0, isolate_leader=3.0, compact=0.5)
    return FaultOptions(
        interval=rng.choice((2, 3, 4)) * TICK,
        weights=tuple(weights[f] for f in FAULTS),
        flap_prob=rng.choice((0.25, 0.5)),
        churn=rng.random() < 0.3,
        conf_burst=2,
        conf_on_new_leader=0.5,
        conf_flap=rng.choice((0.2, 0.5)),
        min_voters=rng.choice((2, 3)),
    )


def describe(opt: ClusterOptions) -> str:
    return (
        f"nodes={opt.nodes} election_ticks={opt.election_ticks} pre_vote={opt.pre_vote} "
        f"check_quorum={opt.check_quorum} max_append_bytes={opt.max_append_bytes} "
        f"max_inflight={opt.max_inflight} fsync_mean={opt.disk.fsync_mean} "
        f"jitter={opt.net.mean_jitter} drop={opt.net.drop_prob} dup={opt.net.dup_prob} "
        f"clients={opt.workload.clients} lease_ticks={opt.lease_ticks}"
    )


def run_seed(
    seed: int, events: int, options: SimOptions | None = None, tail: deque[str] | None = None
) -> SimResult:
    """Run one seed. `tail`, if given, receives the latest trace lines as the run goes, so a
    caller that has to abandon a stuck run still knows where it was."""
    opt = options or SimOptions()
    shape = opt.cluster or draw_cluster(seed)
    drawn_faults: FaultOptions | None = None
    if opt.depose and opt.cluster is None:
        shape, drawn_faults = depose_run(seed)
    if (opt.leases or opt.depose) and not shape.lease_ticks:
        shape = with_leases(shape)
    cluster = Cluster(seed, shape, opt.factory)
    if tail is None:
        tail = deque(maxlen=TAIL)
    cluster.trace_lines = [] if opt.trace else None
    faults = opt.faults or drawn_faults
    if faults is None:
        faults = membership_faults(seed) if opt.membership else draw_faults(seed)
    injector = FaultInjector(cluster.rng("nemesis"), faults)
    injector.start(cluster)
    cluster.workload.start()
    violations = cluster.inv.violations

    def run(until_event: int | None, until_time: int | None) -> bool:
        """Run events; True when stopped by a violation."""
        while until_event is None or cluster.events < until_event:
            if until_time is not None:
                nxt = cluster.sched.peek_time()
                if nxt is None or nxt > until_time:
                    return False
            before = cluster.events
            try:
                if not cluster.step():
                    return False
            except Exception as e:  # reported, never swallowed: the run ends here
                frames = traceback.extract_tb(e.__traceback__)[-4:]
                where = " <- ".join(f"{f.name}:{f.lineno}" for f in reversed(frames))
                cluster.inv.fail("exception", f"{type(e).__name__}: {e} (at {where})")
                cluster.last_line = f"{cluster.events + 1} {cluster.sched.now} raised {e!r}"
            if cluster.events != before or violations:
                tail.append(cluster.last_line)
            if violations:
                return True
        return False

    stopped = run(events, None)
    if not stopped:
        stopped = _wind_down(cluster, opt, run)
    if not stopped and opt.check_linearizability:
        problems, undecided = check_ops(cluster.workload.ops)
        for problem in problems:
            cluster.inv.fail("not_linearizable", problem)
        for node_id in sorted(cluster.nodes):
            # Exactly-once (thesis §6.3): every value is written by one op, so a value that
            # appears twice in a node's history is a retried session write applied twice.
            for dup in cluster.nodes[node_id].sm.duplicate_writes():
                cluster.inv.fail("applied_twice", f"{node_id}: {dup}")
        cluster.count("check_undecided_keys", undecided)
    stats = dict(sorted(cluster.stats.items()))
    ops = cluster.workload.ops
    for status in ("ok", "fail", "unknown"):
        stats[f"ops_{status}"] = sum(1 for o in ops if o.status == status)
    stats["lease_reads"] = cluster.workload.lease_reads
    stats["lease_fallbacks"] = cluster.workload.lease_fallbacks
    stats["events"] = cluster.events
    stats["time"] = cluster.sched.now
    stats["terms"] = len(cluster.inv.leaders)
    stats["max_committed"] = cluster.inv.max_committed
    return SimResult(
        seed=seed,
        violations=tuple(violations),
        trace_hash=cluster.trace_hash(),
        stats=stats,
        trace=tuple(cluster.trace_lines or ()),
        tail=tuple(tail),
        config=describe(shape) + (" churn" if faults.churn else ""),
    )


def _wind_down(cluster: Cluster, opt: SimOptions, run: _Runner) -> bool:
    """Stop faults and new operations, heal everything, and wait for convergence."""
    cluster.nemesis = None
    cluster.on_new_leader = None
    cluster.workload.running = False
    cluster.net.heal_all()
    cluster.net.lossy = False
    cluster.resume_all()
    cluster.restart_all()
    healed, events = cluster.sched.now, cluster.events
    deadline = cluster.sched.now + opt.settle_ticks * TICK
    max_events = cluster.events + opt.settle_events
    window = cluster.sched.now
    while window < deadline and cluster.events < max_events:
        window = min(deadline, window + TICK)
        if run(max_events, window):
            return True
        if cluster.workload.pending() == 0 and converged(cluster):
            return False
    if opt.check_liveness:
        cluster.inv.fail(
            "no_convergence",
            f"{(cluster.sched.now - healed) // TICK} ticks and {cluster.events - events} events "
            f"after healing: {convergence_report(cluster)}",
        )
        return True
    return False


def converged(cluster: Cluster) -> bool:
    lead = cluster.leader()
    if lead is None:
        return False
    st = lead.the_core().status()
    if st.commit != st.last_index:
        return False
    for nid in st.conf.all_nodes():
        node = cluster.nodes.get(nid)
        if node is None or not node.running:
            return False
        if node.sm.applied != st.commit or node.the_core().status().leader != lead.id:
            return False
    return True


def convergence_report(cluster: Cluster) -> str:
    parts = []
    for n in cluster.nodes.values():
        if not n.running:
            parts.append(f"{n.id} down")
            continue
        st = n.the_core().status()
        parts.append(
            f"{n.id} {st.role.value} t{st.term} lead={st.leader} c{st.commit} "
            f"a{n.sm.applied} last{st.last_index} voters={','.join(st.conf.voters)}"
        )
    return "; ".join(parts) + f"; pending client ops {cluster.workload.pending()}"
