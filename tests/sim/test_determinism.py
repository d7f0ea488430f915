"""The same seed gives the same run, whatever the process and its string-hash salt."""

from __future__ import annotations

import os
import subprocess
import sys

from raftkv.sim.runner import SimOptions, run_seed

EVENTS = 1500


def test_same_seed_same_trace_hash() -> None:
    a = run_seed(11, EVENTS, SimOptions(trace=True))
    b = run_seed(11, EVENTS, SimOptions(trace=True))
    assert a.trace_hash == b.trace_hash
    assert a.trace == b.trace
    assert a.stats == b.stats
    assert a.stats["events"] >= EVENTS
    assert len(a.trace) == a.stats["events"]  # one line per event


def test_different_seeds_differ() -> None:
    hashes = {run_seed(s, 300).trace_hash for s in range(5)}
    assert len(hashes) == 5


def test_trace_hash_independent_of_hash_seed() -> None:
    """Set iteration order of str depends on PYTHONHASHSEED: the trace must not."""
    code = "from raftkv.sim.runner import run_seed; print(run_seed(5, 1200).trace_hash)"
    outs = []
    for salt in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": salt}
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outs.append(proc.stdout.strip())
    assert outs[0] == outs[1] == run_seed(5, 1200).trace_hash
