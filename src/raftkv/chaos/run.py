"""One chaos run, start to verdict: cluster up, workload + nemesis, heal, final reads, checks.

Rules:
- The run owns everything it starts and undoes it on every way out (`finally`, plus `atexit`
  for the nodes and the firewall table): nodes are stopped (SIGCONT first), the nftables table
  is deleted, even when the run is cancelled (SIGINT/SIGTERM cancel the task running it).
- Order at the end: the nemesis stops first (its last fault undone) a few seconds before the
  clients, so the timeline shows the recovery; then everything is healed (partitions removed,
  nodes resumed, crashed nodes restarted), the cluster must become ready again, every key is
  read linearizably once more (those reads join the history), and the replicas must hold the
  same values once they have applied the same index.
- Addresses: node i on 127.0.0.i; the clients and the admin requests come from addresses no
  partition cuts (127.0.0.10 and up).
- The `membership` scenario adds a conductor (`membership.py`) that grows, replaces and shrinks
  the cluster meanwhile, and a ledger writer (`ledger.py`). The nemesis then runs until the
  conductor's last cycle is done (so every change meets faults), and the checks at the end add
  the cluster's own member list and the ledger on every member.
- The history is written as JSON lines to the run directory (and to `history_path` if given).
  The run directory is removed at the end unless `keep_data`, or the run found an anomaly.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec

from raftkv.chaos import httpclient
from raftkv.chaos.analysis import failovers, locate, lost_writes, stale_reads, timeline
from raftkv.chaos.cluster import (
    Cluster,
    Crash,
    NodeSpec,
    config_yaml,
    default_node_cmd,
    plan_nodes,
)
from raftkv.chaos.ledger import LedgerResult, check_ledger, run_ledger
from raftkv.chaos.membership import Conductor
from raftkv.chaos.nemesis import (
    KILLS,
    PARTITIONS,
    PAUSES,
    FaultWindow,
    Schedule,
    needs_firewall,
    run_nemesis,
)
from raftkv.chaos.netfilter import Firewall
from raftkv.chaos.report import ChaosReport
from raftkv.chaos.workload import PROBE_KEY, Recorder, WorkloadSpec, run_client, run_prober
from raftkv.check import Op, OpKind, Outcome, check_history, dumps_jsonl
from raftkv.check.revisions import revision_problems

ADMIN_IP: Final = "127.0.0.10"
CLIENT_IPS: Final = tuple(f"127.0.0.{i}" for i in range(11, 27))
STARTUP_TIMEOUT_S: Final = 60.0  # a loaded 2-core box takes seconds to import and start 3 nodes
RECOVERY_TIMEOUT_S: Final = 30.0
CONVERGE_TIMEOUT_S: Final = 20.0
FINAL_CLIENT: Final = "final"
_MAX_REVISION_PROBLEMS: Final = 20


@dataclass(frozen=True, slots=True)
class Scenario:
    faults: tuple[str, ...]
    workload: WorkloadSpec
    schedule: Schedule = field(default_factory=Schedule)
    summary: str = ""
    membership: bool = False  # grow / replace / shrink meanwhile (membership.py)


SCENARIOS: Final[dict[str, Scenario]] = {
    "random-failures": Scenario(
        KILLS + PAUSES, WorkloadSpec(), summary="kill -9 + restart and SIGSTOP/SIGCONT pauses"
    ),
    "network-partition": Scenario(
        PARTITIONS,
        WorkloadSpec(),
        summary="nftables partitions: isolate a follower or the leader, majority/minority, "
        "a single cut link, one-way loss",
    ),
    "cas-txn": Scenario(
        KILLS + PAUSES,
        WorkloadSpec(put_weight=0.2, get_weight=0.3, delete_weight=0.1, cas_weight=0.4),
        summary="kill -9 + restart and pauses under compare-and-set (POST /txn and If-Match) "
        "clients; revisions checked against real time",
    ),
    "load-test-with-failures": Scenario(
        KILLS + PAUSES + PARTITIONS,
        WorkloadSpec(clients=24, keys=8, think_s=0.0),
        Schedule(quiet_s=(1.0, 3.0), hold_s=(2.0, 6.0)),
        summary="every fault above under a saturating workload (24 clients, no think time)",
    ),
    "membership": Scenario(
        # kill-majority stops the cluster until the nodes are back; opt in with --faults.
        tuple(f for f in KILLS if f != "kill-majority") + PAUSES + PARTITIONS,
        WorkloadSpec(),
        summary="grow 3 -> 5 (serve --join, promoted automatically), replace a node (kill, "
        "remove, a fresh node on an empty disk), shrink 5 -> 3 (the leader removed too), over "
        "and over, with kills, pauses and partitions meanwhile; every member must hold every "
        "acknowledged write",
        membership=True,
    ),
}


class HarnessError(RuntimeError):
    """The run could not be carried out (the cluster never came up, nft failed ...)."""


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    scenario: str
    duration_s: float = 60.0
    seed: int = 0
    node_count: int = 3
    clients: int | None = None  # default: the scenario's
    keys: int | None = None  # default: the scenario's
    faults: tuple[str, ...] | None = None  # default: the scenario's
    node_cmd: tuple[str, ...] = field(default_factory=lambda: tuple(default_node_cmd()))
    work_dir: Path | None = None  # where the run directory is made (default: the system tmp)
    keep_data: bool = False
    history_path: Path | None = None
    snapshot_every: int = 500  # small, so restarted nodes catch up from snapshots too
    max_check_steps: int = 1_000_000  # per key

    def workload(self) -> WorkloadSpec:
        base = SCENARIOS[self.scenario].workload
        return WorkloadSpec(
            clients=self.clients or base.clients,
            keys=self.keys or base.keys,
            think_s=base.think_s,
            put_weight=base.put_weight,
            get_weight=base.get_weight,
            delete_weight=base.delete_weight,
            cas_weight=base.cas_weight,
            timeout_s=base.timeout_s,
            connect_timeout_s=base.connect_timeout_s,
        )

    def fault_names(self) -> tuple[str, ...]:
        return self.faults or SCENARIOS[self.scenario].faults


Say = Callable[[str], None]


async def run_chaos(opts: ChaosOptions, say: Say) -> ChaosReport:
    if opts.scenario not in SCENARIOS:
        raise HarnessError(f"unknown scenario {opts.scenario!r}")
    if not 1 <= opts.node_count <= 9:
        raise HarnessError("node count must be 1..9 (nodes live on 127.0.0.1 .. 127.0.0.9)")
    if SCENARIOS[opts.scenario].membership and not 1 <= opts.node_count <= 7:
        raise HarnessError("membership: node count must be 1..7 (it grows by 2 on 127.0.0.1-9)")
    spec = opts.workload()
    names = opts.fault_names()
    work = Path(tempfile.mkdtemp(prefix="raftkv-chaos-", dir=opts.work_dir))
    specs = plan_nodes([f"127.0.0.{i}" for i in range(1, opts.node_count + 1)])
    config = work / "cluster.yaml"
    config.write_text(
        config_yaml(
            specs,
            work / "data",
            snapshot_every=opts.snapshot_every,
            leader_wait_ms=1000,
            request_timeout_ms=1500,
        ),
        encoding="utf-8",
    )
    cluster = Cluster(specs, opts.node_cmd, config, work / "logs")
    cluster.admin_ip = ADMIN_IP
    firewall = Firewall() if needs_firewall(names) else None
    atexit.register(cluster.kill_all)
    run = _Run(opts, spec, names, cluster, firewall, say, work / "data")
    try:
        if firewall is not None:
            firewall.open()
            say(f"nftables table inet {firewall.table} ready")
        say(f"starting {len(specs)} nodes in {work}")
        cluster.start_all()
        if not await cluster.wait_ready(STARTUP_TIMEOUT_S):
            tails = "\n".join(f"{n}:\n{p.log_tail(8)}" for n, p in cluster.nodes.items())
            raise HarnessError(
                f"the cluster did not become ready in {STARTUP_TIMEOUT_S:g} s\n{tails}"
            )
        recorder = Recorder()
        await run.workload_and_faults(recorder)
        await run.heal_and_verify(recorder)
    finally:
        if firewall is not None:
            firewall.close()
        cluster.stop_all()
        atexit.unregister(cluster.kill_all)
    report = run.report(recorder, work)
    if opts.keep_data or report.anomalies:
        return report
    shutil.rmtree(work, ignore_errors=True)
    if opts.history_path is None:
        report = dataclasses.replace(
            report, history_path="(not kept: use --keep-data or --history)"
        )
    return report


class _Run:
    def __init__(
        self,
        opts: ChaosOptions,
        spec: WorkloadSpec,
        names: tuple[str, ...],
        cluster: Cluster,
        firewall: Firewall | None,
        say: Say,
        data_root: Path,
    ) -> None:
        self.opts, self.spec, self.names = opts, spec, names
        self.cluster, self.firewall, self.say = cluster, firewall, say
        self.data_root = data_root
        # The nodes the clients pick from; the membership conductor keeps it current.
        self.client_nodes: list[NodeSpec] = [cluster.specs[n] for n in cluster.ids]
        self.conductor: Conductor | None = None
        self.ledger: LedgerResult | None = None
        self.windows: list[FaultWindow] = []
        self.crashes: list[Crash] = []
        self.problems: list[str] = []
        self.divergence: list[str] = []
        self.final_reads: dict[str, Op] = {}

    async def workload_and_faults(self, recorder: Recorder) -> None:
        opts = self.opts
        rng = random.Random(opts.seed)
        client_rngs = [random.Random(rng.getrandbits(64)) for _ in range(self.spec.clients)]
        stop_clients, stop_nemesis = asyncio.Event(), asyncio.Event()
        nodes = self.client_nodes
        clients = [
            asyncio.create_task(
                run_client(
                    i, self.spec, nodes, recorder, client_rngs[i], stop_clients,
                    CLIENT_IPS[i % len(CLIENT_IPS)],
                )
            )
            for i in range(self.spec.clients)
        ]  # fmt: skip
        clients.append(
            asyncio.create_task(
                run_prober(self.spec, nodes, recorder, stop_clients, CLIENT_IPS[-1])
            )
        )
        nemesis = asyncio.create_task(
            run_nemesis(
                self.cluster,
                self.firewall,
                self.names,
                rng,
                stop_nemesis,
                recorder.now,
                self.windows,
                SCENARIOS[opts.scenario].schedule,
            )
        )
        watcher = asyncio.create_task(self._watch_crashes(recorder))
        helpers = [watcher]
        conducting: asyncio.Task[None] | None = None
        finish = asyncio.Event()
        if SCENARIOS[opts.scenario].membership:
            self.conductor = Conductor(
                self.cluster,
                self.client_nodes,
                self.data_root,
                random.Random(rng.getrandbits(64)),
                recorder.now,
                self.say,
            )
            conducting = asyncio.create_task(self.conductor.run(finish))
            helpers.append(asyncio.create_task(self.conductor.watch_leader()))
            ledger_rng = random.Random(rng.getrandbits(64))
            clients.append(
                asyncio.create_task(
                    run_ledger(self.spec, nodes, recorder, ledger_rng, stop_clients, CLIENT_IPS[-2])
                )
            )
        tail = min(5.0, opts.duration_s * 0.15)  # quiet end: the timeline shows the recovery
        self.say(f"running {opts.scenario} for {opts.duration_s:g} s (seed {opts.seed})")
        try:
            await asyncio.sleep(opts.duration_s - tail)
            if conducting is not None:  # the cycle under way finishes, under faults
                finish.set()
                await conducting
            stop_nemesis.set()
            await nemesis
            await asyncio.sleep(tail)
        finally:
            stop_nemesis.set()
            stop_clients.set()
            tasks = [nemesis, *clients]
            if conducting is not None:
                conducting.cancel()
                tasks.append(conducting)
            await asyncio.gather(*tasks, return_exceptions=True)
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise HarnessError(f"a chaos task failed: {task.exception()!r}")
        self.say(f"workload done: {len(recorder.history)} ops, {len(self.windows)} faults")

    async def _watch_crashes(self, recorder: Recorder) -> None:
        while True:
            await asyncio.sleep(0.25)
            for crash in self.cluster.reap_crashes(recorder.now()):
                self.say(f"{crash.node_id} crashed (exit {crash.returncode}); restarting it")
                self.crashes.append(crash)
                self.cluster.nodes[crash.node_id].start()

    async def heal_and_verify(self, recorder: Recorder) -> None:
        if self.firewall is not None:
            self.firewall.heal()
        self.crashes += self.cluster.reap_crashes(recorder.now())
        for node in self.cluster.nodes.values():
            node.resume()
            node.start()  # no-op when running
        if not await self.cluster.wait_ready(RECOVERY_TIMEOUT_S):
            self.problems.append(
                f"the cluster was not ready {RECOVERY_TIMEOUT_S:g} s after healing"
            )
        await self._final_reads(recorder)
        await self._converge()
        if self.conductor is not None:
            await self.conductor.final_check()
            self.ledger = await check_ledger(self.cluster, recorder.history.ops())

    async def _final_reads(self, recorder: Recorder) -> None:
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        nodes = [self.cluster.specs[n] for n in self.cluster.ids]
        for i, key in enumerate([*self.spec.key_names(), PROBE_KEY]):
            attempt = 0
            while time.monotonic() < deadline:
                node = nodes[(i + attempt) % len(nodes)]
                attempt += 1
                result = await recorder.perform(
                    FINAL_CLIENT, OpKind.GET, key, node, self.spec, source_ip=ADMIN_IP
                )
                if result.outcome is Outcome.OK:
                    self.final_reads[key] = recorder.history.ops()[-1]
                    break
                await asyncio.sleep(0.1)
            else:
                self.problems.append(f"no linearizable read of {key!r} succeeded after healing")

    async def _converge(self) -> None:
        """Once every node has applied the same index, every key must read the same on all."""
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        ids = self.cluster.ids
        while time.monotonic() < deadline:
            before = await self._applied()
            if before is not None:
                values = {n: await self._stale_values(n) for n in ids}
                if await self._applied() == before and all(v is not None for v in values.values()):
                    for key in [*self.spec.key_names(), PROBE_KEY]:
                        seen = {n: vals[key] for n, vals in values.items() if vals is not None}
                        if len(set(seen.values())) > 1:
                            self.divergence.append(
                                f"key {key!r} at applied index {before}: "
                                + ", ".join(f"{n}={v!r}" for n, v in sorted(seen.items()))
                            )
                    return
            await asyncio.sleep(0.2)
        self.problems.append(
            f"the replicas did not settle on one applied index within {CONVERGE_TIMEOUT_S:g} s"
        )
        self.problems += await self._describe_nodes()

    async def _describe_nodes(self) -> list[str]:
        """One line per node: where it stands, and the peers it refused (a member that lags
        behind a conf change may refuse a leader it does not know: issue 13)."""
        statuses = await self.cluster.statuses()
        lines = []
        for node_id in self.cluster.ids:
            s = statuses.get(node_id)
            where = (
                "no /cluster/local answer"
                if s is None
                else f"{s.get('role')} term {s.get('term')} leader {s.get('leader_id')} "
                f"commit {s.get('commit_index')} applied {s.get('applied_index')}"
            )
            refused = self.cluster.nodes[node_id].log_lines("inbound_refused")
            if refused:
                last = refused[-1].split("reason=", 1)[-1][:120]
                where += f"; {len(refused)} peer connections refused, the last: {last}"
            lines.append(f"  {node_id}: {where}")
        return lines

    async def _applied(self) -> int | None:
        """The applied index if every node has applied all it knows committed, and all agree."""
        statuses = await self.cluster.statuses()
        if len(statuses) != len(self.cluster.ids):
            return None
        applied = {s.get("applied_index") for s in statuses.values()}
        commits = {s.get("commit_index") for s in statuses.values()}
        if len(applied) != 1 or applied != commits:
            return None
        value = applied.pop()
        return value if isinstance(value, int) else None

    async def _stale_values(self, node_id: str) -> dict[str, str | None] | None:
        values: dict[str, str | None] = {}
        for key in [*self.spec.key_names(), PROBE_KEY]:
            try:
                reply = await self.cluster.admin(node_id, "GET", f"/kv/{key}?consistency=stale")
            except (httpclient.NotSent, httpclient.MaybeSent):
                return None
            doc = reply.json() or {}
            if reply.status == 200 and isinstance(doc.get("value"), str):
                values[key] = str(doc["value"])
            elif reply.status == 404 and doc.get("code") == "key_not_found":
                values[key] = None
            else:
                return None
        return values

    def report(self, recorder: Recorder, work: Path) -> ChaosReport:
        ops = recorder.history.ops()
        history_path = work / "history.jsonl"
        history_path.write_bytes(dumps_jsonl(ops))
        encode = msgspec.json.encode
        (work / "events.jsonl").write_bytes(b"".join(encode(e) + b"\n" for e in recorder.events))
        kept = str(history_path)
        if self.opts.history_path is not None:
            self.opts.history_path.write_bytes(dumps_jsonl(ops))
            kept = str(self.opts.history_path)
        self.say(f"checking {len(ops)} ops for linearizability")
        check = check_history(ops, max_steps=self.opts.max_check_steps)
        end = max((e.end for e in recorder.events), default=0.0)
        stale = stale_reads(ops, [r.key for r in check.violations])
        return ChaosReport(
            scenario=self.opts.scenario,
            seed=self.opts.seed,
            duration_s=self.opts.duration_s,
            nodes=tuple(self.cluster.ids),
            clients=self.spec.clients,
            keys=self.spec.keys,
            faults_drawn_from=self.names,
            work_dir=str(work),
            history_path=kept,
            ops=ops,
            reasons=recorder.reasons,
            failovers=failovers(ops, self.windows),
            timeline=timeline(recorder.events, self.windows, end, sorted(self.cluster.nodes)),
            check=check,
            lost=lost_writes(ops, self.final_reads),
            divergence=self.divergence,
            unexpected=recorder.unexpected,
            crashes=self.crashes,
            stale=locate(stale, recorder.events, self.windows),
            membership=self.conductor.summary(self.ledger) if self.conductor else None,
            problems=[
                *self.problems,
                *(self.conductor.problems if self.conductor else ()),
                *(self.ledger.anomalies() if self.ledger else ()),
                *(f"revisions: {p}" for p in revision_problems(ops)[:_MAX_REVISION_PROBLEMS]),
            ],
        )
