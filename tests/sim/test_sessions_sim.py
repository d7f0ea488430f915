"""Exactly-once in the simulator: session writes retried across leader changes, crashes and
lost replies are applied once; a state machine that skips the dedup is caught.

The workload (sim/workload.py) sends every write through a client session and re-sends it,
unchanged, after an unknown outcome; it also issues one-key transactions (CAS). The runner
fails a run where any node's history holds a value twice (`applied_twice`).
"""

from __future__ import annotations

import pytest

from raftkv.kv import machine
from raftkv.kv.commands import Result, SessionRequest
from raftkv.kv.mvcc import MVCCStore
from raftkv.kv.sessions import ApplyWrite
from raftkv.sim import runner
from raftkv.sim.runner import run_seed
from raftkv.sim.workload import OK, OpRecord

EVENTS = 3000
SEEDS = range(4)


def test_retried_session_writes_apply_once_and_cas_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[OpRecord] = []
    check = runner.check_ops

    def capture(ops: list[OpRecord]) -> tuple[list[str], int]:
        seen.extend(ops)
        return check(ops)

    monkeypatch.setattr(runner, "check_ops", capture)
    for seed in SEEDS:
        result = run_seed(seed, EVENTS)
        assert result.ok, result.violations
    assert any(op.retries > 0 and op.status == OK for op in seen), "no retry was answered"
    assert any(op.kind == "cas" and op.status == OK for op in seen), "no CAS succeeded"


def _no_dedup(
    store: MVCCStore, req: SessionRequest, revision: int, apply_write: ApplyWrite
) -> Result:
    return apply_write(store, req.cmd, revision)


def test_a_machine_without_dedup_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "apply_session_request", _no_dedup)
    kinds: set[str] = set()
    for seed in SEEDS:
        kinds |= {v.kind for v in run_seed(seed, EVENTS).violations}
    assert kinds & {"applied_twice", "not_linearizable"}, kinds
