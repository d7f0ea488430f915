"""The long runs (opt in: `pytest -m chaos`): 60 s of every scenario against the real node.

CHAOS_SEED picks the seed (default: a fixed one per scenario), CHAOS_DURATION the length.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.chaos_helpers import needs_nft, run_chaos

SCENARIOS = {"random-failures": 101, "network-partition": 202, "load-test-with-failures": 303}


@pytest.mark.chaos
@needs_nft
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_passes(scenario: str, tmp_path: Path) -> None:
    seed = os.environ.get("CHAOS_SEED", str(SCENARIOS[scenario]))
    duration = float(os.environ.get("CHAOS_DURATION", "60"))
    run = run_chaos(scenario, tmp_path, "--seed", seed, duration=duration)
    assert run.returncode == 0 and run.report.get("result") == "pass", run.explain()
    assert run.report["faults"], run.explain()
