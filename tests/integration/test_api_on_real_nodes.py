"""The HTTP API's refusals, read-your-writes on followers, status and readiness, on real nodes.

Every error must be JSON with `error` and `code`, including those raised before a handler runs
(over-long request line, unknown route, wrong method), and no input may produce a 500.
"""

from __future__ import annotations

import pytest

from tests.integration.cluster import Cluster, Reply, kv_path, seed_view


def assert_error(reply: Reply, status: int, code: str | None = None) -> dict[str, object]:
    assert reply.status == status, reply
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    body = reply.json
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("code"), str) and body["code"], body
    if code is not None:
        assert body["code"] == code, body
    return body


@pytest.mark.parametrize("node_id", ["leader", "follower"])
def test_bad_inputs_are_json_errors(shared_cluster: Cluster, node_id: str) -> None:
    c = shared_cluster
    leader = c.wait_leader()
    target = leader if node_id == "leader" else next(n for n in c.nodes if n != leader)
    json_h = {"Content-Type": "application/json"}

    # 414: a key of 4097 bytes; 4096 is still fine (and readable back).
    assert_error(c.put(target, "k" * 4097, "v"), 414, "key_too_large")
    assert_error(c.get(target, "k" * 4097), 414, "key_too_large")
    long_key = "é" * 2048  # 4096 UTF-8 bytes, percent-encoded to 12 KiB of request line
    assert c.put(target, long_key, "long").status == 200
    assert seed_view(c.get(target, long_key).json) == {"key": long_key, "value": "long"}

    # 413: a 2 MiB value, raw and as JSON.
    big = "x" * (2 << 20)
    assert_error(c.put(target, "big", big, as_json=False), 413, "value_too_large")
    assert_error(c.put(target, "big", big), 413, "value_too_large")
    assert_error(c.get(target, "big"), 404, "key_not_found")

    # 400s: malformed JSON, a value that is not a string, no value, non-UTF-8 raw body, empty
    # key, bad consistency level.
    path = kv_path("bad")
    assert_error(c.req(target, "PUT", path, body=b'{"value": ', headers=json_h), 400)
    assert_error(c.req(target, "PUT", path, body=b'{"value": 42}', headers=json_h), 400)
    assert_error(c.req(target, "PUT", path, body=b'{"other": "x"}', headers=json_h), 400)
    assert_error(c.req(target, "PUT", path, body=b"[1, 2]", headers=json_h), 400)
    assert_error(c.req(target, "PUT", path, body=b"\xff\xfe\x00"), 400, "invalid_encoding")
    assert_error(c.req(target, "PUT", "/kv/", body=b"v"), 400, "invalid_key")
    assert_error(c.req(target, "GET", "/kv/%ZZ"), 400, "invalid_key")
    assert_error(c.req(target, "GET", kv_path("bad", "consistency=eventual")), 400)
    assert_error(c.get(target, "bad"), 404, "key_not_found")

    # 404: an absent key (GET and DELETE), an unknown route.
    body = assert_error(c.get(target, "no-such-key"), 404, "key_not_found")
    assert body["key"] == "no-such-key"
    assert_error(c.delete(target, "no-such-key"), 404, "key_not_found")
    assert_error(c.req(target, "GET", "/no/such/route"), 404)
    assert_error(c.req(target, "GET", "/"), 404)

    # 405: wrong method on a known route.
    assert_error(c.req(target, "POST", kv_path("k"), body=b"v"), 405)
    assert_error(c.req(target, "PATCH", kv_path("k"), body=b"v"), 405)
    assert_error(c.req(target, "DELETE", "/cluster/status"), 405)

    # A request line far beyond any key: JSON too, never a 500 or a dropped connection.
    reply = c.req(target, "GET", "/kv/" + "a" * 40_000)
    assert reply.status in (400, 414), reply
    assert_error(reply, reply.status)

    # The node is still fine.
    assert c.put(target, "after-bad-inputs", "ok").status == 200
    assert c.get(target, "after-bad-inputs").json["value"] == "ok"


def test_delete_and_overwrite(shared_cluster: Cluster) -> None:
    c = shared_cluster
    assert c.put("node-2", "del:me", "one").status == 200
    assert c.put("node-3", "del:me", "two").status == 200
    assert c.get("node-1", "del:me").json["value"] == "two"
    reply = c.delete("node-3", "del:me")
    assert reply.status == 200, reply
    assert reply.json["key"] == "del:me"
    for node_id in c.nodes:
        assert_error(c.get(node_id, "del:me"), 404, "key_not_found")


def test_linearizable_read_on_follower_sees_leaders_write(shared_cluster: Cluster) -> None:
    c = shared_cluster
    leader = c.wait_leader()
    followers = [n for n in c.nodes if n != leader]
    for i in range(50):
        value = f"v{i}"
        reply = c.put(leader, "lin:key", value)
        assert reply.status == 200, reply
        follower = followers[i % 2]
        reply = c.get(follower, "lin:key")  # default: linearizable (ReadIndex via the leader)
        assert reply.status == 200, (i, follower, reply)
        assert reply.json["value"] == value, (i, follower, reply)


def test_status_indexes_and_ready(shared_cluster: Cluster) -> None:
    c = shared_cluster
    leader = c.wait_leader()
    assert c.put(leader, "status:probe", "x").status == 200
    status = c.status(leader)
    me = status["nodes"][leader]
    assert me["is_leader"] is True
    assert me["commit_index"] >= 1
    assert me["applied_index"] <= me["commit_index"] <= me["last_index"]
    for node_id in c.nodes:
        reply = c.req(node_id, "GET", "/ready")
        assert reply.status == 200, reply
        assert reply.json["leader"] == leader
        assert c.req(node_id, "GET", "/health").json == {"status": "ok"}
