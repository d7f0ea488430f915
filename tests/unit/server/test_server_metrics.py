"""/metrics and the runtime metrics: what is counted, how it is exposed, the slow-fsync warning."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from structlog.testing import capture_logs

from raftkv.raft.messages import Heartbeat, HeartbeatResponse
from raftkv.raft.rawnode import Status
from raftkv.raft.types import ConfState, Index, NodeId, Role, Term
from raftkv.runtime.metrics import Histogram, NodeSample, RuntimeMetrics
from raftkv.server.config import ConfigError, load_settings
from tests.unit.server.fakes import FakeNode, aio, client_for, make_settings

N1, N2, N3 = NodeId("node-1"), NodeId("node-2"), NodeId("node-3")


def _sample(tmp_path: Path) -> NodeSample:
    (tmp_path / "raft.db").write_bytes(b"x" * 1000)
    status = Status(
        id=N1,
        role=Role.LEADER,
        term=Term(3),
        vote=N1,
        leader=N1,
        commit=Index(7),
        applied=Index(6),
        last_index=Index(8),
        persisted_index=Index(8),
        first_index=Index(1),
        conf=ConfState(voters=(N1, N2, N3)),
        lead_transferee=None,
        progress={},
    )
    return NodeSample(
        status=status,
        applied_index=6,
        snapshot_index=0,
        pending_proposals=2,
        peers=[N2, N3],
        outbound_connected=frozenset({N2}),
        inbound_connected=frozenset({N2, N3}),
        files=[("log", tmp_path / "raft.db"), ("log", tmp_path / "missing-wal")],
        alarms=[("nospace", False)],
    )


class MeasuredNode(FakeNode):
    def __init__(self, metrics: RuntimeMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def metrics(self) -> RuntimeMetrics:
        return self._metrics


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert isinstance(s, Sample)
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@aio
async def test_metrics_endpoint_counts_requests_by_route_and_status(tmp_path: Path) -> None:
    metrics = RuntimeMetrics("node-1", 0.1, lambda: _sample(tmp_path))
    node = MeasuredNode(metrics)
    async with client_for(node, make_settings(tmp_path)) as client:
        for key in ("a", "b", "c"):
            assert (await client.put(f"/kv/{key}", json={"value": "v"})).status == 200
        assert (await client.get("/kv/missing")).status == 404
        assert (await client.get("/no/such/route")).status == 404
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        got = _samples(await resp.text())

    def count(route: str, status: str) -> float:
        labels = (("route", route), ("status", status))
        return got[("raftkv_http_request_duration_seconds_count", labels)]

    assert count("PUT /kv/{key}", "200") == 3
    assert count("GET /kv/{key}", "404") == 1
    assert count("unmatched", "404") == 1
    # Gauges come from the node's sample at scrape time.
    assert got[("raftkv_role", (("role", "leader"),))] == 1
    assert got[("raftkv_role", (("role", "follower"),))] == 0
    assert got[("raftkv_term", ())] == 3
    assert got[("raftkv_commit_index", ())] == 7
    assert got[("raftkv_applied_index", ())] == 6
    assert got[("raftkv_last_index", ())] == 8
    assert got[("raftkv_proposals_pending", ())] == 2
    assert got[("raftkv_peer_connected", (("direction", "outbound"), ("peer", "node-3")))] == 0
    assert got[("raftkv_peer_connected", (("direction", "inbound"), ("peer", "node-3")))] == 1
    assert got[("raftkv_db_size_bytes", (("store", "log"),))] == 1000
    assert got[("raftkv_alarm", (("alarm", "nospace"),))] == 0


@aio
async def test_metrics_off_answers_404_in_json(tmp_path: Path) -> None:
    async with client_for(FakeNode(), make_settings(tmp_path)) as client:
        resp = await client.get("/metrics")
        assert resp.status == 404
        assert (await resp.json())["code"] == "metrics_disabled"


def test_runtime_counters_and_histograms_are_exposed(tmp_path: Path) -> None:
    m = RuntimeMetrics("node-1", 0.1, lambda: _sample(tmp_path))
    m.persisted(0.0003, 5)
    m.persisted(0.0004, 0)
    m.applied(5)
    m.proposals_committed += 5
    m.leader_seen(N1)
    m.leader_seen(N1)  # the same leader again is no change
    m.leader_seen(None)
    m.leader_seen(N2)
    m.sent([Heartbeat(term=Term(3), from_=N1, to=N2, commit=Index(7))])
    m.received(HeartbeatResponse(term=Term(3), from_=N2, to=N1))
    m.received(HeartbeatResponse(term=Term(3), from_=N3, to=N1))  # no heartbeat out: ignored
    m.snapshot_done("build", 0.2, 12345)
    got = _samples(generate_latest(m.registry).decode())
    assert got[("raftkv_wal_fsync_duration_seconds_count", ())] == 2
    assert got[("raftkv_wal_fsync_duration_seconds_bucket", (("le", "0.00025"),))] == 0
    assert got[("raftkv_wal_fsync_duration_seconds_bucket", (("le", "0.0005"),))] == 2
    assert got[("raftkv_ready_entries_sum", (("step", "persist"),))] == 5
    assert got[("raftkv_ready_entries_count", (("step", "apply"),))] == 1
    assert got[("raftkv_proposals_committed_total", ())] == 5
    assert got[("raftkv_leader_changes_seen_total", ())] == 2
    assert got[("raftkv_peer_round_trip_seconds_count", (("peer", "node-2"),))] == 1
    assert ("raftkv_peer_round_trip_seconds_count", (("peer", "node-3"),)) not in got
    labels = (("result", "ok"), ("step", "build"))
    assert got[("raftkv_snapshot_duration_seconds_count", labels)] == 1
    assert got[("raftkv_snapshot_size_bytes_sum", (("step", "build"),))] == 12345
    assert got[("process_open_fds", ())] > 0


def test_slow_fsync_warns_once_per_second(tmp_path: Path) -> None:
    m = RuntimeMetrics("node-1", 0.1, lambda: _sample(tmp_path))  # warn at >= 50 ms
    with capture_logs() as logs:
        m.persisted(0.010, 1)
        m.persisted(0.060, 1)
        m.persisted(0.070, 1)  # within the same second: counted, not logged
    slow = [e for e in logs if e["event"] == "slow fdatasync"]
    assert len(slow) == 1
    assert slow[0]["log_level"] == "warning"
    assert slow[0]["took_ms"] == 60.0
    assert slow[0]["expected_below_ms"] == 50.0


def test_histogram_buckets_are_upper_bounds_inclusive() -> None:
    h = Histogram((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 2.0, 3.0):
        h.observe(v)
    assert h.counts == [2, 2, 1]
    assert h.total == 8.0


def test_config_switch(tmp_path: Path) -> None:
    assert make_settings(tmp_path).metrics is True
    path = tmp_path / "off.yaml"
    text = (tmp_path / "cluster.yaml").read_text()
    path.write_text(text + "server:\n  metrics: false\n")
    assert load_settings({"config": path, "node_id": "node-1"}, env={}).metrics is False
    path.write_text(text + "server:\n  metrics: 1\n")
    with pytest.raises(ConfigError, match=r"^server\.metrics: must be true or false"):
        load_settings({"config": path, "node_id": "node-1"}, env={})
