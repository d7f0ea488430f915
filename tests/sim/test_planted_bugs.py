"""Each classic Raft bug, planted in a test-only core, is caught within the CI sweep's seeds.

The search runs seeds in order and stops at the first violation (capped at SIM_SEEDS).
"""

from __future__ import annotations

import pytest

from raftkv.cli.sim_cmd import describe_violations, sweep
from raftkv.sim.runner import SimOptions
from tests.sim.planted import BUGS
from tests.sim.settings import EVENTS, JOBS, SEEDS, TIMEOUT

# What each bug is expected to break first (any of these counts as caught).
EXPECTED = {
    "figure8_commit": {"commit_unsafe", "committed_changed", "leader_incomplete"},
    "vote_without_log_check": {"leader_incomplete", "commit_unsafe", "committed_changed"},
    "ack_before_persist": {"commit_unsafe", "leader_incomplete", "committed_changed"},
    "read_without_heartbeat": {"stale_read", "not_linearizable"},
    "no_suffix_truncation": {"log_mismatch", "committed_changed", "commit_unsafe"},
}


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_planted_bug_is_caught(bug: str) -> None:
    results = sweep(
        range(SEEDS),
        EVENTS,
        jobs=JOBS,
        options=SimOptions(factory=BUGS[bug]),
        timeout=TIMEOUT,
        stop_at_first=True,
    )
    caught = results[-1]
    assert caught.violations, f"{bug}: no violation in {len(results)} seeds"
    kinds = {v.kind for v in caught.violations}
    report = "\n".join(describe_violations(caught))
    assert kinds & EXPECTED[bug], f"{bug} caught as {kinds}, not {EXPECTED[bug]}\n{report}"
