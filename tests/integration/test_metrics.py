"""`GET /metrics` scraped from real nodes: the series exist and move with the work done."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.cluster import Cluster, kv_path, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(c: Cluster, node_id: str) -> Samples:
    reply = c.req(node_id, "GET", "/metrics")
    assert reply.status == 200, reply
    assert reply.headers["content-type"].startswith("text/plain"), reply.headers
    out: Samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_on_real_nodes(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(raft_extra={"snapshot_every": 20})
    c.start()
    leader = c.wait_ready()
    follower = next(n for n in c.nodes if n != leader)
    c.wait_caught_up(follower, leader)

    before_l, before_f = scrape(c, leader), scrape(c, follower)
    assert value(before_l, "raftkv_role", role="leader") == 1
    assert value(before_f, "raftkv_role", role="follower") == 1
    assert value(before_l, "raftkv_term") >= 1
    for peer in c.nodes:
        if peer != leader:
            assert value(before_l, "raftkv_peer_connected", peer=peer, direction="outbound") == 1

    writes = 30
    for i in range(writes):
        assert c.put(leader, f"m{i}", "v").status == 200
    assert c.put(follower, "via-follower", "v").status == 200  # forwarded to the leader
    assert c.get(follower, "via-follower").status == 200  # linearizable: a ReadIndex round
    assert c.req(leader, "GET", kv_path("absent")).status == 404

    after_l = scrape(c, leader)
    put = "PUT /kv/{key}"
    assert (
        value(after_l, "raftkv_http_request_duration_seconds_count", route=put, status="200")
        - (value(before_l, "raftkv_http_request_duration_seconds_count", route=put, status="200"))
        == writes + 1
    )  # ours + the forwarded one
    get404 = value(
        after_l, "raftkv_http_request_duration_seconds_count", route="GET /kv/{key}", status="404"
    )
    assert get404 >= 1
    committed = value(after_l, "raftkv_proposals_committed_total")
    assert committed - value(before_l, "raftkv_proposals_committed_total") == writes + 1
    assert value(after_l, "raftkv_commit_index") >= value(before_l, "raftkv_commit_index") + writes
    assert value(after_l, "raftkv_wal_fsync_duration_seconds_count") > value(
        before_l, "raftkv_wal_fsync_duration_seconds_count"
    )
    assert value(after_l, "raftkv_ready_entries_sum", step="apply") >= writes
    assert value(after_l, "raftkv_db_size_bytes", store="log") > 0
    assert value(after_l, "raftkv_db_size_bytes", store="state") > 0

    # snapshot_every 20: a snapshot is built after 31 writes. Built (the build's duration is
    # observed) comes before recorded in the log (the snapshot index moves): wait for both.
    def snapshot_recorded() -> Samples | None:
        now = scrape(c, leader)
        built = value(now, "raftkv_snapshot_duration_seconds_count", step="build", result="ok")
        return now if built >= 1 and value(now, "raftkv_snapshot_index") >= 20 else None

    wait_for("a snapshot built and recorded on the leader", snapshot_recorded)

    after_f = scrape(c, follower)
    assert value(after_f, "raftkv_http_forwarded_total", status="200") == 1
    assert value(after_f, "raftkv_read_index_rounds_total") > value(
        before_f, "raftkv_read_index_rounds_total"
    )
    assert value(after_f, "raftkv_applied_index") >= value(before_f, "raftkv_applied_index") + 1

    # Heartbeat round trips accumulate on the leader, one series per follower.
    def rtt_seen() -> bool:
        s = scrape(c, leader)
        return all(
            value(s, "raftkv_peer_round_trip_seconds_count", peer=p) > 0
            for p in c.nodes
            if p != leader
        )

    wait_for("heartbeat round trips on the leader", rtt_seen)
