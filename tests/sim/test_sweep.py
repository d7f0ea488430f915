"""The CI sweep: SIM_SEEDS seeds x SIM_EVENTS events against the real core, no violation.

`SIM_SEEDS=10000 pytest tests/sim/test_sweep.py` goes deep. Core bugs the simulator found are
reduced to deterministic repros in test_core_bugs_found.py; a seed that still exposes one may
be parked in KNOWN_CORE_BUGS (kept out of the sweep, checked by a strict xfail) until the fix.
"""

from __future__ import annotations

import pytest

from raftkv.cli.sim_cmd import describe_violations, sweep
from raftkv.sim.runner import SimResult
from tests.sim.settings import EVENTS, JOBS, SEEDS, TIMEOUT

KNOWN_CORE_BUGS: dict[int, str] = {}  # seed -> what goes wrong (none at the moment)

# Seeds outside the default sweep that once exposed a core bug, swept on every run.
REGRESSION_SEEDS: dict[int, str] = {
    3196: "bcast_append spun on an inactive follower needing a snapshot (fixed in 54c38e5)",
}


def _report(bad: list[SimResult]) -> str:
    return "\n".join(line for r in bad for line in describe_violations(r))


def test_sweep_finds_no_violation() -> None:
    seeds = [s for s in range(SEEDS) if s not in KNOWN_CORE_BUGS]
    results = sweep(seeds, EVENTS, jobs=JOBS, timeout=TIMEOUT)
    assert [r.seed for r in results] == seeds
    bad = [r for r in results if r.violations]
    assert not bad, _report(bad)
    assert sum(r.stats["events"] for r in results) >= len(seeds) * EVENTS
    # the sweep exercised what it claims to: faults, elections, snapshots, clients
    total = {k: sum(r.stats.get(k, 0) for r in results) for k in results[0].stats}
    for stat in ("crashes", "partitions", "pauses", "conf_changes", "compactions", "ops_ok"):
        assert total.get(stat, 0) > len(seeds) // 10, (stat, total)
    assert sum(r.stats.get("snapshots_applied", 0) for r in results) > len(seeds) // 10


def test_regression_seeds() -> None:
    # a healthy seed takes well under a second: 10 s is plenty before calling it a hang
    results = sweep(sorted(REGRESSION_SEEDS), EVENTS, jobs=JOBS, timeout=10)
    bad = [r for r in results if r.violations]
    assert not bad, _report(bad)


@pytest.mark.skipif(not KNOWN_CORE_BUGS, reason="no known core bug seeds")
@pytest.mark.xfail(strict=True, reason="known core bugs, see KNOWN_CORE_BUGS")
def test_known_core_bug_seeds() -> None:
    results = sweep(sorted(KNOWN_CORE_BUGS), EVENTS, jobs=JOBS, timeout=10)
    bad = [r for r in results if r.violations]
    assert not bad, _report(bad)
