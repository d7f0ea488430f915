"""The serve path's GC tuning names long collections (issue 12: loop stalls cost leadership)."""

from __future__ import annotations

import gc

import pytest
from structlog.testing import capture_logs

from raftkv.cli import serve


def test_long_collection_is_logged_short_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([10.0, 10.5, 20.0, 20.001])
    monkeypatch.setattr(serve.time, "perf_counter", lambda: next(clock))
    with capture_logs() as logs:
        serve._log_long_gc("start", {"generation": 2})
        serve._log_long_gc("stop", {"generation": 2, "collected": 7})
        serve._log_long_gc("start", {"generation": 0})
        serve._log_long_gc("stop", {"generation": 0, "collected": 1})
    assert [(e["event"], e["generation"], e["took_ms"]) for e in logs] == [
        ("long gc pause", 2, 500.0)
    ]


def test_tune_gc_freezes_and_installs_the_callback() -> None:
    before = (gc.get_threshold(), list(gc.callbacks))
    try:
        serve._tune_gc()
        assert gc.get_threshold() == (20_000, 50, 1000)
        assert gc.get_freeze_count() > 0
        assert serve._log_long_gc in gc.callbacks
    finally:
        gc.unfreeze()
        gc.set_threshold(*before[0])
        gc.callbacks[:] = before[1]
