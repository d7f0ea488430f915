"""Unit tests of the simulator's parts: clock, network, disk, invariants, workload, CLI."""

from __future__ import annotations

import random

from typer.testing import CliRunner

from raftkv.cli.main import app
from raftkv.raft.ready import Persist, Ready
from raftkv.raft.storage import MemoryStorage
from raftkv.raft.types import ConfState, Entry, HardState, Index, NodeId, Role, Term
from raftkv.sim.disk import Disk
from raftkv.sim.history import check_ops
from raftkv.sim.invariants import Invariants
from raftkv.sim.network import NetProfile, Network
from raftkv.sim.runner import SimOptions, run_seed
from raftkv.sim.scheduler import Scheduler, Tick
from raftkv.sim.statemachine import KvMachine, Put, encode_command
from raftkv.sim.workload import FAIL, OK, OpRecord

N1, N2, N3 = NodeId("n1"), NodeId("n2"), NodeId("n3")


def _entry(index: int, term: int, data: bytes = b"") -> Entry:
    return Entry(Term(term), Index(index), data=data)


def test_scheduler_orders_by_time_then_push_order() -> None:
    s = Scheduler()
    s.push(5, Tick(N1, 1))
    s.push(3, Tick(N2, 1))
    s.push(5, Tick(N3, 1))
    got = [s.pop() for _ in range(3)]
    assert got == [Tick(N2, 1), Tick(N1, 1), Tick(N3, 1)]
    assert s.now == 5 and s.pop() is None


def test_network_partitions_overlap_and_heal_independently() -> None:
    net = Network(random.Random(1), NetProfile())
    a = net.isolate(N1, [N1, N2, N3], inbound=True, outbound=False)
    b = net.split([N1], [N2, N3])
    assert net.blocked(N2, N1) and net.blocked(N1, N2)
    net.heal(b)
    assert net.blocked(N2, N1) and not net.blocked(N1, N2)  # a is one-way: into n1 only
    net.heal(a)
    assert not net.blocked(N2, N1) and net.partitions() == []


def test_network_loses_nothing_when_not_lossy() -> None:
    net = Network(random.Random(2), NetProfile(drop_prob=1.0, dup_prob=1.0))
    assert net.delays(N1, N2) == []
    net.lossy = False
    assert len(net.delays(N1, N2)) == 1


def test_disk_crash_keeps_a_prefix_of_unsynced_writes() -> None:
    conf = ConfState(voters=(N1,))
    kept = set()
    for seed in range(30):
        disk = Disk(conf)
        disk.write(Persist(None, (_entry(1, 1),), HardState(Term(1), N1, Index(0)), True))
        disk.sync()
        disk.write(Persist(None, (_entry(2, 1),), None, True))
        disk.write(Persist(None, (_entry(3, 1),), None, True))
        n = disk.crash(random.Random(seed))
        store = disk.load()
        assert store.last_index() == 1 + n  # in order: never entry 3 without entry 2
        assert store.hard_state.vote == N1
        kept.add(n)
    assert kept == {0, 1, 2}


def test_invariants_catch_two_leaders_and_a_log_mismatch() -> None:
    inv = Invariants()
    inv.observe(N1, 1, Role.LEADER, 2, 0, 0)
    inv.observe(N2, 1, Role.LEADER, 2, 0, 0)
    assert [v.kind for v in inv.violations] == ["two_leaders"]
    store = MemoryStorage(ConfState(voters=(N1, N2)))
    inv.on_persist(N1, store, Persist(None, (_entry(1, 1, b"a"),), None, True))
    inv.on_persist(N2, store, Persist(None, (_entry(1, 1, b"b"),), None, True))
    assert inv.violations[-1].kind == "log_mismatch"


def test_invariants_catch_a_commit_a_candidate_could_undo() -> None:
    inv = Invariants()
    # n1 committed (5, t2), but only n1 holds it durably; n2's log ends at (t3, 4).
    durable = {N1: (2, 5), N2: (1, 4), N3: (1, 4)}
    full = {N1: (True, (2, 5)), N2: (False, (3, 4)), N3: (False, (1, 4))}
    inv.check_commit_safe(N1, 5, 2, durable, full)
    assert [v.kind for v in inv.violations] == ["commit_unsafe"]
    ok = Invariants()  # n2 holds it durably too: n3 cannot win against n1 and n2
    full = {N1: (True, (2, 5)), N2: (True, (2, 5)), N3: (False, (1, 4))}
    ok.check_commit_safe(N1, 5, 2, {N1: (2, 5), N2: (2, 5), N3: (1, 4)}, full)
    assert ok.violations == []


def test_invariants_catch_a_leader_missing_a_committed_entry() -> None:
    inv = Invariants()
    sm = KvMachine()
    e = _entry(1, 1, encode_command(Put("k", "v")))
    sm.apply(e)
    inv.on_apply_entry(N1, e, 0, sm.digest)
    inv.observe(N1, 1, Role.FOLLOWER, 1, 1, 1)
    inv.observe(N2, 1, Role.LEADER, 2, 0, 0)
    empty = Ready(None, None, (_entry(1, 2),), None, (), (), (), (), True)
    inv.on_take_ready(N2, MemoryStorage(ConfState(voters=(N1, N2))), 0, empty)
    assert [v.kind for v in inv.violations] == ["leader_incomplete"]


def test_stale_read_fails_linearizability() -> None:
    ops = [
        OpRecord(0, 0, "put", "k", "v1", 0, N1, OK, 10),
        OpRecord(1, 1, "put", "k", "v2", 20, N1, OK, 30),
        OpRecord(2, 2, "get", "k", "v1", 40, N2, OK, 50),
        OpRecord(3, 2, "put", "k", "v3", 60, N2, FAIL, 70),
    ]
    problems, undecided = check_ops(ops)
    assert len(problems) == 1 and undecided == 0
    ops[2].value = "v2"
    assert check_ops(ops) == ([], 0)


def test_a_quiet_run_converges_and_serves_clients() -> None:
    from raftkv.sim.faults import FaultOptions

    quiet = FaultOptions(weights=(0.0,) * 9 + (1.0, 0.0), flap_prob=0.0)  # only forced campaigns
    r = run_seed(3, 3000, SimOptions(faults=quiet))
    assert r.ok, r.violations
    assert r.stats["ops_ok"] > 50
    assert r.stats["max_committed"] > 50


def test_cli_replays_a_seed_and_sweeps() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["sim", "--seed", "2", "--events", "300", "--trace"])
    assert res.exit_code == 0, res.output
    assert "trace hash " + run_seed(2, 300).trace_hash in res.output
    assert res.output.count("\n") > 300
    res = runner.invoke(app, ["sim", "--seeds", "3", "--events", "200", "--jobs", "2"])
    assert res.exit_code == 0, res.output
    assert "failing seeds: none" in res.output
