"""The CI sweep: SIM_SEEDS seeds x SIM_EVENTS events against the real core, no violation.

Seeds that once exposed a core bug stay in the sweep as regressions (seed 100: bcast_append spun
on a follower needing a snapshot it was not sent; see tests/sim/test_core_bugs_found.py).
"""

from __future__ import annotations

from raftkv.cli.sim_cmd import describe_violations, sweep
from raftkv.sim.runner import SimResult
from tests.sim.settings import EVENTS, JOBS, SEEDS, TIMEOUT


def _report(bad: list[SimResult]) -> str:
    return "\n".join(line for r in bad for line in describe_violations(r))


def test_sweep_finds_no_violation() -> None:
    seeds = list(range(SEEDS))
    results = sweep(seeds, EVENTS, jobs=JOBS, timeout=TIMEOUT)
    assert [r.seed for r in results] == seeds
    bad = [r for r in results if r.violations]
    assert not bad, _report(bad)
    total = sum(r.stats["events"] for r in results)
    assert total >= len(seeds) * EVENTS
