"""Revisions, CAS, ranges, transactions, compaction, sessions and min_revision on real nodes.

Writes go to a follower on purpose: forwarding must carry If-Match / If-None-Match and the
session headers, or a conditional write would become a blind one.
"""

from __future__ import annotations

import json
import urllib.parse

from tests.integration.cluster import Cluster, Reply, kv_path


def jput(c: Cluster, node: str, key: str, value: str, **headers: str) -> Reply:
    body = json.dumps({"value": value}).encode()
    h = {"Content-Type": "application/json", **headers}
    return c.req(node, "PUT", kv_path(key), body=body, headers=h)


def post(c: Cluster, node: str, path: str, doc: object, **headers: str) -> Reply:
    h = {"Content-Type": "application/json", **headers}
    return c.req(node, "POST", path, body=json.dumps(doc).encode(), headers=h)


def test_revisions_cas_and_history_through_a_follower(shared_cluster: Cluster) -> None:
    c = shared_cluster
    leader = c.wait_ready()
    f = next(n for n in c.nodes if n != leader)

    first = jput(c, f, "dm:cas", "one")
    assert first.status == 200, first
    rev1 = first.json["revision"]
    assert first.headers["etag"] == f'"{rev1}"'
    got = c.req(f, "GET", kv_path("dm:cas", f"min_revision={rev1}&consistency=stale"))
    assert got.json == {
        "key": "dm:cas",
        "value": "one",
        "create_revision": rev1,
        "mod_revision": rev1,
        "version": 1,
    }
    assert got.headers["etag"] == f'"{rev1}"'

    # CAS: the right ETag wins, a stale one gets 412 with the current mod_revision.
    second = jput(c, f, "dm:cas", "two", **{"If-Match": f'"{rev1}"'})
    assert second.status == 200, second
    rev2 = second.json["revision"]
    assert rev2 > rev1
    stale = jput(c, f, "dm:cas", "three", **{"If-Match": f'"{rev1}"'})
    assert stale.status == 412, stale
    assert stale.json["code"] == "precondition_failed"
    assert stale.json["mod_revision"] == rev2
    assert jput(c, f, "dm:cas", "x", **{"If-None-Match": "*"}).status == 412
    absent = jput(c, f, "dm:absent", "x", **{"If-Match": '"1"'})
    assert (absent.status, absent.json["mod_revision"]) == (412, 0)
    assert jput(c, f, "dm:created", "x", **{"If-None-Match": "*"}).status == 200
    bad_delete = c.req(f, "DELETE", kv_path("dm:cas"), headers={"If-Match": f'"{rev1}"'})
    assert bad_delete.status == 412

    # History: the first value is still readable at its revision.
    old = c.req(f, "GET", kv_path("dm:cas", f"revision={rev1}"))
    assert old.json["value"] == "one"

    # Compaction: reads below it are refused with 410.
    compact = post(c, f, "/compact", {"revision": rev2})
    assert compact.status == 200, compact
    assert compact.json == {"compact_revision": rev2}
    gone = c.req(f, "GET", kv_path("dm:cas", f"revision={rev1}"))
    assert gone.status == 410
    assert (gone.json["code"], gone.json["compact_revision"]) == ("compacted", rev2)
    assert c.req(f, "GET", kv_path("dm:cas", f"revision={rev2}")).json["value"] == "two"


def test_ranges_paging_and_prefix_delete(shared_cluster: Cluster) -> None:
    c = shared_cluster
    leader = c.wait_ready()
    f = next(n for n in c.nodes if n != leader)
    for i in range(5):
        assert jput(c, f, f"rg:{i}", f"v{i}").status == 200
    assert jput(c, f, "rh", "outside").status == 200

    first = c.req(f, "GET", "/kv?prefix=rg:&limit=2")
    page = first.json
    assert [i["key"] for i in page["items"]] == ["rg:0", "rg:1"]
    assert (page["count"], page["next_after"]) == (5, "rg:1")
    rev = page["revision"]
    keys = [i["key"] for i in page["items"]]
    after = page["next_after"]
    while after is not None:
        q = urllib.parse.urlencode({"prefix": "rg:", "limit": 2, "after": after, "revision": rev})
        page = c.req(f, "GET", f"/kv?{q}").json
        keys += [i["key"] for i in page["items"]]
        after = page["next_after"]
    assert keys == [f"rg:{i}" for i in range(5)]
    exact = c.req(f, "GET", "/kv?prefix=rg:&limit=5").json
    assert exact["next_after"] is None  # the range ends exactly at the limit

    span = c.req(f, "GET", "/kv?start=rg:3&end=ri&keys_only=true").json
    assert [i["key"] for i in span["items"]] == ["rg:3", "rg:4", "rh"]
    assert "value" not in span["items"][0]
    assert c.req(f, "GET", "/kv?prefix=rg:&count_only=true").json["count"] == 5
    assert c.req(f, "GET", "/kv").status == 400
    assert c.req(f, "DELETE", "/kv?prefix=").status == 400

    deleted = c.req(f, "DELETE", "/kv?prefix=rg:")
    assert deleted.status == 200, deleted
    assert deleted.json["deleted"] == 5
    assert c.req(f, "GET", "/kv?prefix=rg:").json["count"] == 0
    # The whole range is still readable at the revision before the delete.
    before = c.req(f, "GET", f"/kv?prefix=rg:&revision={deleted.json['revision'] - 1}")
    assert before.json["count"] == 5


def test_txn_and_binary_values(shared_cluster: Cluster) -> None:
    c = shared_cluster
    leader = c.wait_ready()
    f = next(n for n in c.nodes if n != leader)
    txn = {
        "compare": [{"key": "tx:a", "target": "version", "op": "==", "value": 0}],
        "success": [
            {"op": "put", "key": "tx:a", "value": "1"},
            {"op": "put", "key": "tx:b", "value": "2"},
            {"op": "get", "key": "tx:", "prefix": True},
        ],
        "failure": [{"op": "get", "key": "tx:a"}],
    }
    ok = post(c, f, "/txn", txn)
    assert ok.status == 200, ok
    assert ok.json["succeeded"] is True
    rev = ok.json["revision"]
    assert ok.json["results"][0] == {"op": "put", "revision": rev}
    assert [i["key"] for i in ok.json["results"][2]["items"]] == ["tx:a", "tx:b"]
    again = post(c, f, "/txn", txn)
    assert again.json["succeeded"] is False
    assert again.json["results"][0]["items"][0]["mod_revision"] == rev
    too_many = {"success": [{"op": "get", "key": "k"}] * 129}
    assert post(c, f, "/txn", too_many).json["code"] == "too_many_ops"

    raw = bytes(range(256))
    put = c.req(
        f, "PUT", kv_path("bin"), body=raw, headers={"Content-Type": "application/octet-stream"}
    )
    assert put.status == 200, put
    as_json = c.req(f, "GET", kv_path("bin"))
    assert as_json.json["value_encoding"] == "base64"
    as_raw = c.req(f, "GET", kv_path("bin"), headers={"Accept": "application/octet-stream"})
    assert as_raw.body == raw


def test_session_retries_apply_once_through_a_follower(shared_cluster: Cluster) -> None:
    c = shared_cluster
    leader = c.wait_ready()
    f = next(n for n in c.nodes if n != leader)
    opened = post(c, f, "/session", {"ttl_s": 30})
    assert opened.status == 201, opened
    sid = str(opened.json["session_id"])
    h = {"Raftkv-Session": sid, "Raftkv-Seq": "1"}
    first = jput(c, f, "sess:k", "mine", **h)
    assert first.status == 200, first
    assert jput(c, leader, "sess:k", "theirs").status == 200
    # The retry (same seq) is not applied again and gets the original reply, revision included.
    retry = jput(c, f, "sess:k", "mine", **h)
    assert retry.json == first.json
    assert c.get(leader, "sess:k").json["value"] == "theirs"
    acked = jput(
        c, f, "sess:k", "later", **{"Raftkv-Session": sid, "Raftkv-Seq": "2", "Raftkv-Ack": "2"}
    )
    assert acked.status == 200
    stale = jput(c, f, "sess:k", "mine", **h)
    assert (stale.status, stale.json["code"]) == (409, "stale_request")
    unknown = jput(c, f, "sess:k", "x", **{"Raftkv-Session": "1", "Raftkv-Seq": "1"})
    assert (unknown.status, unknown.json["code"]) == (409, "session_expired")
