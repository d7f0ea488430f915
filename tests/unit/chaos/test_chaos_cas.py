"""The chaos workload's compare-and-set: how it is sent and how replies become history."""

from __future__ import annotations

import msgspec

from raftkv.chaos.httpclient import Reply
from raftkv.chaos.workload import cas_request, classify_cas
from raftkv.check import Outcome


def reply(status: int, doc: object) -> Reply:
    return Reply(status, msgspec.json.encode(doc))


def test_cas_request_forms() -> None:
    method, path, body, _ = cas_request("k", "old", None, "new", use_txn=False)
    assert (method, path) == ("POST", "/txn")  # no revision known: only a value compare works
    doc = msgspec.json.decode(body)
    assert doc["compare"] == [{"key": "k", "target": "value", "op": "==", "value": "old"}]
    assert doc["failure"] == [{"op": "get", "key": "k"}]
    assert cas_request("k", "old", 7, "new", use_txn=False)[3] == {"If-Match": '"7"'}
    assert cas_request("k", None, None, "new", use_txn=False)[3] == {"If-None-Match": "*"}
    absent = msgspec.json.decode(cas_request("k", None, None, "new", use_txn=True)[2])
    assert absent["compare"][0]["target"] == "version"


def test_classify_cas_replies() -> None:
    ok, seen = classify_cas(reply(200, {"succeeded": True, "revision": 9, "results": []}))
    assert (ok.outcome, ok.revision, seen) == (Outcome.OK, 9, None)
    refused = {
        "succeeded": False,
        "revision": 9,
        "results": [{"op": "get", "items": [{"key": "k", "value": "x", "mod_revision": 4}]}],
    }
    failed, seen = classify_cas(reply(200, refused))
    assert (failed.outcome, seen) == (Outcome.FAIL, ("x", 4))
    empty = {"succeeded": False, "revision": 9, "results": [{"op": "get", "items": []}]}
    assert classify_cas(reply(200, empty))[1] == (None, None)
    pre = {"error": "precondition failed", "code": "precondition_failed", "mod_revision": 3}
    assert classify_cas(reply(412, pre))[0].outcome is Outcome.FAIL
    put_ok = {"key": "k", "value": "v", "message": "stored", "revision": 12}
    assert classify_cas(reply(200, put_ok))[0].revision == 12
    timeout = {"error": "timed out", "code": "timeout"}
    assert classify_cas(reply(504, timeout))[0].outcome is Outcome.UNKNOWN
    assert classify_cas(reply(500, {"code": "internal_error"}))[0].unexpected
