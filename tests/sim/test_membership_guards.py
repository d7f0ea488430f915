"""The two membership guards matter: without either, the simulator breaks safety.

- one at a time (thesis §4.1): a leader refuses a change while another is pending;
- commit in term (raft-dev 2015): a new leader refuses a change until it has committed an entry
  of its term.
Each is planted out of a test-only core (tests/sim/planted.py). Under membership-heavy faults
(`SimOptions(membership=True)`: frequent changes in bursts of two, changes asked of brand-new
leaders, leaders cut off right after proposing one) the simulator catches each as a SAFETY
violation (two leaders in a term, a committed entry changed or lost), while the real core stays
clean on the same seeds.

Default run: the seeds below (found by the longer sweep), a few seconds.
`SIM_MEMBERSHIP_SEEDS=300 pytest tests/sim/test_membership_guards.py -k sweep` goes longer and
prints how often each planted bug is caught.
"""

from __future__ import annotations

import os

import pytest

from raftkv.cli.sim_cmd import describe_violations, sweep
from raftkv.sim.runner import SimOptions
from tests.sim.planted import GUARD_BUGS
from tests.sim.settings import EVENTS, JOBS, TIMEOUT

SAFETY = {"two_leaders", "committed_changed", "commit_unsafe", "leader_incomplete", "log_mismatch"}

# Seeds on which each planted bug breaks safety (SIM_EVENTS=2000), from the longer sweep.
# They move when the simulated workload changes (traces change): refresh them with the sweep.
CAUGHT_ON = {
    "conf_change_not_one_at_a_time": (7, 19, 74),
    "conf_change_before_commit_in_term": (36, 38, 96),
}
LONG_SEEDS = int(os.environ.get("SIM_MEMBERSHIP_SEEDS", "0"))
CLEAN_SEEDS = 24  # the real core under the same faults, in the default run


@pytest.mark.parametrize("bug", sorted(GUARD_BUGS))
def test_planted_guard_removal_is_caught(bug: str) -> None:
    seeds = CAUGHT_ON[bug]
    opts = SimOptions(factory=GUARD_BUGS[bug], membership=True)
    results = sweep(seeds, EVENTS, jobs=JOBS, options=opts, timeout=TIMEOUT)
    for r in results:
        kinds = {v.kind for v in r.violations}
        report = "\n".join(describe_violations(r))
        assert kinds & SAFETY, f"{bug} on seed {r.seed}: {kinds or 'no violation'}\n{report}"


def test_real_core_is_clean_on_the_same_seeds_and_more() -> None:
    seeds = sorted({*range(CLEAN_SEEDS), *(s for ss in CAUGHT_ON.values() for s in ss)})
    results = sweep(seeds, EVENTS, jobs=JOBS, options=SimOptions(membership=True), timeout=TIMEOUT)
    bad = [r for r in results if r.violations]
    assert not bad, "\n".join(line for r in bad for line in describe_violations(r))
    total = {k: sum(r.stats.get(k, 0) for r in results) for k in ("conf_changes", "conf_refused")}
    # the guards were exercised: changes went through, and second changes were refused
    assert total["conf_changes"] > len(seeds) and total["conf_refused"] > len(seeds), total


@pytest.mark.skipif(not LONG_SEEDS, reason="set SIM_MEMBERSHIP_SEEDS=N for the longer sweep")
def test_membership_sweep() -> None:
    seeds = range(LONG_SEEDS)
    real = sweep(seeds, EVENTS, jobs=JOBS, options=SimOptions(membership=True), timeout=TIMEOUT)
    bad = [r for r in real if r.violations]
    assert not bad, "\n".join(line for r in bad for line in describe_violations(r))
    for bug, factory in sorted(GUARD_BUGS.items()):
        opts = SimOptions(factory=factory, membership=True)
        results = sweep(seeds, EVENTS, jobs=JOBS, options=opts, timeout=TIMEOUT)
        caught = [r for r in results if {v.kind for v in r.violations} & SAFETY]
        first = [r.seed for r in caught[:10]]
        print(f"\n{bug}: safety broken on {len(caught)} of {LONG_SEEDS} seeds; first {first}")
        assert caught, f"{bug}: not caught in {LONG_SEEDS} seeds"
