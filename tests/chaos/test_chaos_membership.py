"""The `membership` scenario against the real node: grow 3 -> 5 with `serve --join`, replace a
node, shrink 5 -> 3 (the leader removed too) under the workload and the nemesis.

The short run (one cycle) belongs to the default suite; the long one is opt-in (`-m chaos`,
CHAOS_SEED and CHAOS_DURATION pick its seed and length: several cycles).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.chaos_helpers import Run, needs_nft, run_chaos


def assert_passed(run: Run, *, cycles: int) -> dict[str, Any]:
    r = run.report
    assert run.returncode == 0 and r.get("result") == "pass", run.explain()
    assert r["linearizability"]["verdict"] == "ok"
    assert r["lost_writes"] == [] and r["divergence"] == [] and r["crashes"] == []
    m = r["membership"]
    assert m["cycles"] >= cycles, run.explain()
    # Each cycle: 3 joins (2 to grow, 1 to replace), 1 replacement, 2 removals (one the leader).
    done = m["steps_done"]
    assert done["join"] >= 3 * cycles and done["replace"] >= cycles, m
    assert done["remove"] >= 2 * cycles, m
    assert any(c["what"].endswith("(the leader)") for c in m["changes"]), m
    assert m["leader_changes"] >= cycles, m  # removing the leader hands leadership over
    assert len(m["final_members"]) == 3 and r["nodes"] == m["final_members"], m
    ledger = m["ledger"]
    assert ledger["acknowledged"] > 0 and ledger["missing"] == [], ledger
    assert ledger["refused_present"] == [] and ledger["nodes"] == m["final_members"], ledger
    assert r["faults"], run.explain()  # the nemesis did act
    return m


@needs_nft
def test_grow_replace_shrink_under_faults_one_cycle(tmp_path: Path) -> None:
    run = run_chaos("membership", tmp_path, "--seed", "1", duration=20)
    assert_passed(run, cycles=1)


@pytest.mark.chaos
@needs_nft
def test_membership_long(tmp_path: Path) -> None:
    seed = os.environ.get("CHAOS_SEED", "404")
    duration = float(os.environ.get("CHAOS_DURATION", "180"))
    run = run_chaos("membership", tmp_path, "--seed", seed, duration=duration)
    assert_passed(run, cycles=2)
