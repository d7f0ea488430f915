"""wrk's result and progress parsing, thread sizing, and the comparison's table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from raftkv.bench.compare import CompareOptions, markdown, summarize
from raftkv.bench.spec import LoadSpec
from raftkv.bench.wrk import _result, read_progress, wrk_threads


def test_progress_sums_threads_and_skips_half_written_lines(tmp_path: Path) -> None:
    (tmp_path / "progress.0").write_text("10 0 1\n25 1 2\n")
    (tmp_path / "progress.1").write_text("7 0 1\n9 2")  # last line cut mid-write
    assert read_progress(tmp_path, 3) == (25 + 7, 1 + 0)  # thread 2 has no file yet


def test_wrk_threads_leave_cores_to_the_servers() -> None:
    assert wrk_threads(64, cores=2) == 1
    assert wrk_threads(64, cores=8) == 4
    assert wrk_threads(1, cores=8) == 1


def test_result_from_wrk_output() -> None:
    raw: dict[str, Any] = {
        "duration_us": 2_000_000,
        "requests": 1000,
        "socket_errors": {"connect": 0, "read": 2, "write": 0, "timeout": 1},
        "latency_us": {
            "min": 100, "max": 90_000, "mean": 2_500.0,
            "p50": 2_000, "p90": 4_000, "p99": 9_000, "p999": 50_000,
        },
        "threads": [
            {"errors": {"http_503:no_leader": 4}, "samples_t": [10_500_000],
             "samples_l": [2_000], "samples_s": [200]},
            {"errors": {"http_503:no_leader": 1}, "samples_t": [10_200_000],
             "samples_l": [3_000], "samples_s": [503]},
        ],
    }  # fmt: skip
    spec = LoadSpec(url="http://x", samples=True)
    r = _result(spec, raw, start=10.0, progress=[(0.1, 5)], cpu=0.4)
    assert r.requests == 1000 and r.throughput == 500.0
    assert r.errors == {"http_503:no_leader": 5, "read": 2, "timeout": 1}
    assert r.latency_ms["p99"] == 9.0 and r.latency_ms["p999"] == 50.0
    assert [(round(s.t, 3), s.latency_ms, s.ok) for s in r.samples] == [
        (0.2, 3.0, False),
        (0.5, 2.0, True),
    ]
    assert r.generator_cpu_pct == pytest.approx(20.0)


@pytest.mark.parametrize(
    "changes", [{"mode": "write"}, {"concurrency": 0}, {"read_ratio": 2.0}, {"keys": 0}]
)
def test_spec_rejects_nonsense(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LoadSpec(url="http://x", **changes)


def run(tp: float, p50: float, p99: float, cpu: float = 0.1) -> dict[str, Any]:
    return {"throughput": tp, "p50": p50, "p99": p99, "cpu_per_1k": cpu, "errors": {},
            "wrk_cpu_pct": 12.0, "requests": 100}  # fmt: skip


def fake_report() -> dict[str, Any]:
    runs = {
        name: {"raftkv": [run(300, 2, 9), run(100, 1, 5), run(200, 3, 7)],
               "etcd": [run(100, 2, 10)] * 3}
        for name in ("put_c1", "put_c64", "put_c256", "get_lin_c64", "get_stale_c64")
    }  # fmt: skip
    return {
        "machine": {"date": "2026-01-01 00:00 UTC", "nproc": "2", "cpu": "Test CPU",
                    "kernel": "6.1", "python": "3.11", "etcd": "etcd Version: 3.4.23",
                    "wrk": "wrk 4.1.0"},
        "options": {"rounds": 3, "duration_s": 10.0, "failovers": 5, "stability_s": 60.0,
                    "value_size": 100, "keys": 1000},
        "runs": runs,
        "failover_s": {"raftkv": [0.2, 0.3, 0.25], "etcd": [0.15, 0.1, 0.2]},
        "stability": {"raftkv": {"leader_changes": 0}, "etcd": {"leader_changes": 1}},
    }  # fmt: skip


def test_summary_takes_medians_and_ratios() -> None:
    rows = {r["metric"]: r for r in summarize(fake_report())}
    put = rows["PUT c=64 throughput"]
    assert (put["raftkv"], put["etcd"], put["ratio"]) == (200.0, 100.0, 2.0)
    assert rows["PUT c=64 p99"]["raftkv"] == 7.0
    assert rows["PUT c=64 CPU per 1000 requests"]["ratio"] == pytest.approx(1.0)
    assert "PUT c=1 CPU per 1000 requests" not in rows
    fo = rows["failover (kill -9 leader → next PUT ok), median"]
    assert (fo["raftkv"], fo["etcd"]) == (0.25, 0.15)
    assert rows["leader changes during saturating PUT run"]["ratio"] == 0.0


def test_markdown_table_has_machine_header_and_rows() -> None:
    report = fake_report()
    report["summary"] = summarize(report)
    text = markdown(report)
    assert "2 CPUs (Test CPU), Linux 6.1" in text
    assert "| PUT c=64 throughput (req/s) | 200 | 100 | 2.00x ✓ |" in text
    assert "| PUT c=64 p99 (ms) | 7.00 | 10.00 | 0.70x ✓ |" in text
    assert "| leader changes during saturating PUT run | 0 | 1 | — |" in text
    assert "failover times raftkv (s): 0.200, 0.300, 0.250" in text
    report["failover_s"] = {"raftkv": [], "etcd": []}  # an --only run: no failovers
    assert "failover times" not in markdown(report)


def test_only_picks_loads_and_skips_stability_and_failovers_unless_asked(tmp_path: Path) -> None:
    def make(**kw: Any) -> CompareOptions:
        base: dict[str, Any] = dict(
            quick=False, rounds=None, duration_s=None, failovers=None, stability_s=None
        )
        return CompareOptions.make(workdir=tmp_path, **{**base, **kw})

    full = make()
    assert [t.name for t in full.tests][:2] == ["put_c1", "put_c64"]
    assert (full.failovers, full.stability_s) == (5, 60.0)
    one = make(only=("put_c1",))
    assert [t.name for t in one.tests] == ["put_c1"]
    assert (one.failovers, one.stability_s) == (0, 0.0)
    asked = make(only=("put_c1",), failovers=2, stability_s=5.0)
    assert (asked.failovers, asked.stability_s) == (2, 5.0)
    with pytest.raises(ValueError, match="unknown load put_c2"):
        make(only=("put_c2",))
