"""Percentiles, summaries, time series and ratios of load runs."""

from __future__ import annotations

import math

import pytest

from raftkv.bench.stats import (
    LoadResult,
    Sample,
    column_medians,
    latency_summary,
    median,
    merge_errors,
    percentile,
    pkey,
    ratio,
    time_series,
)


def test_percentile_is_nearest_rank_and_an_observed_value() -> None:
    values = sorted(float(v) for v in range(1, 101))  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 90) == 90.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.9) == 100.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 50) == 7.0
    assert percentile([], 99) == 0.0
    assert percentile([1.0, 2.0, 10.0], 50) == 2.0  # no interpolation


@pytest.mark.parametrize("p", [0, -1, 100.1])
def test_percentile_rejects_out_of_range(p: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], p)


def test_pkey_names() -> None:
    assert [pkey(p) for p in (50, 90, 99, 99.9)] == ["p50", "p90", "p99", "p999"]


def test_latency_summary_has_every_field() -> None:
    s = latency_summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s == {"p50": 3.0, "p90": 5.0, "p99": 5.0, "p999": 5.0, "max": 5.0, "mean": 3.0}
    assert latency_summary([])["max"] == 0.0


def test_time_series_from_samples_buckets_latency_and_errors() -> None:
    samples = [
        Sample(0.1, 1.0, True),
        Sample(0.5, 3.0, True),
        Sample(0.9, 100.0, False),
        Sample(2.2, 2.0, True),
    ]
    buckets = time_series(samples, width_s=1.0)
    assert [b.t for b in buckets] == [0.0, 1.0, 2.0]
    assert [b.throughput for b in buckets] == [3.0, 0.0, 1.0]
    assert [b.errors for b in buckets] == [1, 0, 0]
    assert buckets[0].p50_ms == 3.0 and buckets[0].p99_ms == 100.0
    assert buckets[1].p50_ms is None  # an empty second (a failover gap) has no latency


def test_time_series_from_progress_counters() -> None:
    progress = [(0.5, 100), (1.0, 200), (1.5, 250), (2.0, 300)]
    buckets = time_series([], progress, width_s=1.0)
    assert [round(b.throughput) for b in buckets] == [200, 100]
    assert all(b.p50_ms is None for b in buckets)
    with pytest.raises(ValueError):
        time_series([], progress, width_s=0)


def test_load_result_json_and_rates() -> None:
    r = LoadResult("wrk", "put", 64, 1000, {"http_503:no_leader": 3}, 2.0, latency_summary([1.0]))
    r.generator_cpu_s = 0.5
    assert r.throughput == 500.0
    assert r.error_count == 3
    assert r.generator_cpu_pct == 25.0
    body = r.to_json()
    assert body["throughput"] == 500.0 and body["samples"] == 0
    assert "progress" not in body and body["timeline"] == []


def test_median_ratio_and_merge() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert math.isnan(median([]))
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(float("nan"), 1.0))
    merged = merge_errors([{"a": 1, "b": 0}, {"a": 2, "c": 1}])
    assert merged == {"a": 3, "c": 1}


def test_column_medians_take_each_key_over_the_rounds() -> None:
    rows = [{"rps": 3.0, "p50": 9.0}, {"rps": 1.0, "p50": 7.0}, {"rps": 2.0, "p50": 8.0}]
    assert column_medians(rows) == {"rps": 2.0, "p50": 8.0}
    assert column_medians([]) == {}
