"""The space quota and `no_space` alarms in the simulator (kv/quota.py): clients set a small
quota, raise and clear members' disk alarms and compact history while they write, under crashes,
partitions and snapshot installs. Every node must show the same usage, quota and alarms at every
index (the `space_diverged` invariant), writes refused while an alarm is raised must have had no
effect (the linearizability check), and a snapshot restore that recounts wrongly is caught.
"""

from __future__ import annotations

import dataclasses

import pytest

from raftkv.kv import quota
from raftkv.kv.commands import Result
from raftkv.kv.quota import NoSpace
from raftkv.sim import statemachine
from raftkv.sim.runner import SimOptions, draw_cluster, run_seed
from raftkv.sim.workload import FAIL, OK

EVENTS = 4000
SEEDS = range(5)


def _options(seed: int) -> SimOptions:
    shape = draw_cluster(seed)
    workload = dataclasses.replace(shape.workload, space_ops=0.15, quota_bytes=600)
    return SimOptions(cluster=dataclasses.replace(shape, workload=workload))


def test_alarms_are_raised_and_cleared_alike_on_every_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    results: list[Result | None] = []
    raised = cleared = 0
    apply = statemachine.KvMachine.apply

    def watch(self: statemachine.KvMachine, entry: statemachine.Entry) -> None:
        nonlocal raised, cleared
        before = quota.space(self.state).alarms()
        apply(self, entry)
        after = quota.space(self.state).alarms()
        raised += bool(after and not before)
        cleared += bool(before and not after)
        results.append(self.last_result)

    monkeypatch.setattr(statemachine.KvMachine, "apply", watch)
    stats: dict[str, int] = {}
    for seed in SEEDS:
        result = run_seed(seed, EVENTS, _options(seed))
        assert result.ok, (seed, result.violations, result.tail[-5:])
        for k in ("ops_ok", "ops_fail", "snapshots_applied"):
            stats[k] = stats.get(k, 0) + result.stats.get(k, 0)
    assert raised and cleared, (raised, cleared)
    assert any(isinstance(r, NoSpace) for r in results), "no write was refused"
    assert stats["ops_ok"] and stats["ops_fail"], stats
    assert OK and FAIL  # the statuses the history check reads


def test_a_wrong_recount_after_a_snapshot_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    recount = quota.recount

    def off_by_one(store: quota.SpaceStore, live: object, events: object) -> None:
        recount(store, live, events)  # type: ignore[arg-type]
        live_bytes, written = store.space_counters()
        store.set_space_counters(live_bytes + 1, written, store.revision())  # type: ignore[attr-defined]

    monkeypatch.setattr("raftkv.kv.mvcc.recount", off_by_one)
    kinds: set[str] = set()
    for seed in range(8):
        opts = _options(seed)
        kinds |= {v.kind for v in run_seed(seed, EVENTS, opts).violations}
        if "space_diverged" in kinds:
            break
    assert "space_diverged" in kinds, kinds
