"""The space quota and `no_space` alarms on real processes (kv/quota.py, server/alarms.py):
fill past a small quota -> 507 while reads work and every node shows the alarm; deletes free
space -> the alarm clears by itself and writes are accepted again. A disk margin above the real
free space raises each member's disk alarm (clearing is unit-tested: test_server_alarms.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.integration.cluster import Cluster, wait_for
from tests.integration.test_metrics import scrape, value
from tests.integration.test_tools import cli

QUOTA = 40_000
VALUE = "v" * 1000


def _space(c: Cluster, node_id: str) -> dict[str, Any]:
    status = c.status(node_id)
    return {"alarms": status["alarms"], **status["space"]}


def test_quota_fill_refuse_free_and_recover(make_cluster: Callable[..., Cluster]) -> None:
    # History is kept (no automatic compaction): usage only moves with what the test does.
    c = make_cluster(storage_extra={"quota_bytes": QUOTA, "history_revisions": 0})
    c.start()
    leader = c.wait_ready()
    follower = next(n for n in c.nodes if n != leader)
    keys: list[str] = []

    def put_next() -> int:
        key = f"fill/{len(keys):04d}"
        reply = c.put(leader, key, VALUE)
        if reply.status == 200:
            keys.append(key)
        return reply.status

    # The leader records its quota in the log once usage reaches half of it: one key per poll.
    wait_for(
        "the quota in force",
        lambda: put_next() == 200 and _space(c, leader)["quota_bytes"] == QUOTA,
    )
    while (status := put_next()) == 200:
        assert len(keys) < 100, "the quota never refused a write"
    assert status == 507
    refused = c.put(follower, "one-more", VALUE)  # forwarded: the leader's reply comes back
    assert refused.status == 507, refused
    body = refused.json
    assert body["code"] == "no_space" and body["alarms"] == [
        {"alarm": "no_space", "cause": "quota"}
    ]
    assert body["usage_bytes"] >= QUOTA and body["quota_bytes"] == QUOTA

    # Reads work; every node shows the alarm; /ready stays 200 and says why; the metric is set.
    assert c.get(follower, keys[0]).json["value"] == VALUE
    for node_id in c.nodes:
        wait_for(f"{node_id} shows the alarm", lambda n=node_id: _space(c, n)["alarms"])
        ready = c.req(node_id, "GET", "/ready")
        assert ready.status == 200 and ready.json["alarms"] == body["alarms"], ready
    samples = scrape(c, leader)
    assert value(samples, "raftkv_alarm", alarm="no_space") == 1
    assert value(samples, "raftkv_space_quota_bytes") == QUOTA
    assert value(samples, "raftkv_space_usage_bytes") >= QUOTA
    wait_for("the raised log line", lambda: "alarm raised: no_space" in c.nodes[leader].log_text())
    report = cli("inspect", "status", "--json", "-a", c.nodes[follower].http)
    assert report["alarms"] == body["alarms"] and report["space"]["quota_bytes"] == QUOTA

    # Deletes are accepted and free space (a value's bytes each, history kept): below 90 % of
    # the quota the alarm clears by itself.
    for key in keys[: len(keys) // 2]:
        assert c.delete(follower, key).status == 200
    for node_id in c.nodes:
        wait_for(f"{node_id} clears the alarm", lambda n=node_id: not _space(c, n)["alarms"])
    assert _space(c, leader)["usage_bytes"] < QUOTA * 9 // 10
    assert c.put(follower, "after", VALUE).status == 200
    assert "alarms" not in c.req(leader, "GET", "/ready").json
    assert value(scrape(c, leader), "raftkv_alarm", alarm="no_space") == 0
    wait_for(
        "the cleared log line", lambda: "alarm cleared: no_space" in c.nodes[leader].log_text()
    )


def test_disk_margin_raises_each_members_alarm(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(storage_extra={"min_free_bytes": 1 << 60})  # above any real free space
    c.start()
    leader = c.wait_ready()
    members = sorted(c.nodes)

    def disk_alarms() -> list[str]:
        return [a["member"] for a in _space(c, leader)["alarms"] if a["cause"] == "disk"]

    wait_for("every member's disk alarm", lambda: disk_alarms() == members)
    refused = c.put(leader, "k", "v")
    assert refused.status == 507 and refused.json["code"] == "no_space", refused
    assert c.get(leader, "k").status == 404  # reads work (and nothing was written)
