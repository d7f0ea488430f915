"""The sans-I/O encoding of the HTTP API (issue 11's wording), options, and sync/async parity."""

from __future__ import annotations

import base64
import inspect
import json
import urllib.parse

import pytest

from raftkv.client import AsyncClient, Client, errors, protocol
from raftkv.client.options import make_options
from raftkv.client.protocol import Kind, RangeQuery
from raftkv.client.txn_codec import parse_txn
from raftkv.client.types import (
    Compare,
    Delete,
    DeleteOpResult,
    Get,
    GetOpResult,
    KeyValue,
    Put,
    PutOpResult,
    RangeResult,
    TxnRequest,
    TxnResult,
)
from raftkv.client.wire import Reply
from tests.unit.client.scripted import error, reply


def query(target: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(target).query))


def test_put_text_is_json_and_a_write() -> None:
    call = protocol.put("user:john/x y", "Jöhn")
    assert (call.method, call.target, call.kind) == ("PUT", "/kv/user%3Ajohn%2Fx%20y", Kind.WRITE)
    assert json.loads(call.body) == {"value": "Jöhn"}
    assert dict(call.headers) == {"Content-Type": "application/json"}


def test_put_bytes_is_a_raw_octet_stream_body() -> None:
    call = protocol.put("k", b"\x00\xff")
    assert call.body == b"\x00\xff"
    assert dict(call.headers)["Content-Type"] == "application/octet-stream"


def test_conditions_are_http_preconditions() -> None:
    assert dict(protocol.put("k", "v", if_match=12).headers)["If-Match"] == '"12"'
    assert dict(protocol.put("k", "v", if_absent=True).headers)["If-None-Match"] == "*"
    assert dict(protocol.delete("k", if_match=3).headers)["If-Match"] == '"3"'
    with pytest.raises(ValueError):
        protocol.put("k", "v", if_match=1, if_absent=True)
    with pytest.raises(ValueError):
        protocol.put("k", "v", if_match=-1)
    with pytest.raises(ValueError):
        protocol.get("")


def test_get_parameters() -> None:
    assert protocol.get("k").target == "/kv/k"
    call = protocol.get("k", revision=5, consistency="stale", min_revision=9)
    assert query(call.target) == {"revision": "5", "consistency": "stale", "min_revision": "9"}
    assert call.kind is Kind.READ
    with pytest.raises(ValueError):
        protocol.get("k", consistency="eventual")


def test_get_decodes_revisions_and_base64_values() -> None:
    call = protocol.get("k")
    body = {"key": "k", "value": "v", "create_revision": 2, "mod_revision": 5, "version": 3}
    assert call.decode(reply(200, body)) == KeyValue("k", "v", 2, 5, 3)
    raw = base64.b64encode(b"\x00\x01").decode()
    binary = call.decode(reply(200, {"key": "k", "value": raw, "value_encoding": "base64"}))
    assert binary.value == b"\x00\x01" and binary.data == b"\x00\x01"
    seed_reply = call.decode(reply(200, {"key": "k", "value": "v"}))  # a server before revisions
    assert seed_reply.mod_revision == 0 and seed_reply.text == "v"
    with pytest.raises(errors.ServerError):
        call.decode(reply(200, {"value": 1}))


def test_range_parameters_and_paging_pins_the_revision() -> None:
    q = RangeQuery(prefix="user:", limit=2, keys_only=True)
    assert query(protocol.range_(q).target) == {
        "prefix": "user:",
        "limit": "2",
        "keys_only": "true",
    }
    page = RangeResult(items=[], count=5, next_after="user:b", revision=40)
    nxt = protocol.next_page(q, page)
    assert nxt is not None
    assert query(protocol.range_(nxt).target) == {
        "prefix": "user:",
        "limit": "2",
        "keys_only": "true",
        "after": "user:b",
        "revision": "40",
    }
    assert protocol.next_page(q, RangeResult([], 5, None, 40)) is None
    q2 = RangeQuery(start="a", end="m", count_only=True, consistency="stale")
    assert query(protocol.range_(q2).target) == {
        "start": "a",
        "end": "m",
        "count_only": "true",
        "consistency": "stale",
    }
    for bad in (RangeQuery(), RangeQuery(prefix="a", start="b"), RangeQuery(prefix="a", limit=0)):
        with pytest.raises(ValueError):
            protocol.range_params(bad)


def test_range_decoding() -> None:
    body = {
        "items": [
            {"key": "a", "value": "1", "create_revision": 1, "mod_revision": 1, "version": 1}
        ],
        "count": 3,
        "next_after": "a",
        "revision": 8,
    }
    page = protocol.range_(RangeQuery(prefix="")).decode(reply(200, body))
    assert page == RangeResult([KeyValue("a", "1", 1, 1, 1)], 3, "a", 8)


def test_delete_prefix_refuses_the_empty_prefix() -> None:
    assert protocol.delete_prefix("tmp/").target == "/kv?prefix=tmp%2F"
    with pytest.raises(ValueError):
        protocol.delete_prefix("")


def test_txn_encoding() -> None:
    request = TxnRequest(
        compare=[Compare("k", "mod_revision", "==", 4), Compare("b", "value", "!=", b"\x00")],
        success=[Put("k", "v"), Put("b", b"\xff"), Get("k"), Delete("p/", prefix=True)],
        failure=[Get("k")],
    )
    call = protocol.txn(request)
    assert (call.method, call.target, call.kind) == ("POST", "/txn", Kind.WRITE)
    doc = json.loads(call.body)
    assert doc == {
        "compare": [
            {"key": "k", "target": "mod_revision", "op": "==", "value": 4},
            {
                "key": "b",
                "target": "value",
                "op": "!=",
                "value": "AA==",
                "value_encoding": "base64",
            },
        ],
        "success": [
            {"op": "put", "key": "k", "value": "v"},
            {"op": "put", "key": "b", "value": "/w==", "value_encoding": "base64"},
            {"op": "get", "key": "k"},
            {"op": "delete", "key": "p/", "prefix": True},
        ],
        "failure": [{"op": "get", "key": "k"}],
    }
    assert parse_txn(call.body) == request  # what `raftkv txn` reads is the same JSON
    with pytest.raises(TypeError):
        protocol.txn(TxnRequest(compare=[Compare("k", "version", "==", "1")]))


def test_txn_results_are_typed() -> None:
    body = {
        "succeeded": True,
        "revision": 9,
        "results": [
            {
                "op": "get",
                "items": [
                    {"key": "k", "value": "/w==", "value_encoding": "base64", "mod_revision": 3}
                ],
                "count": 1,
            },
            {"op": "put", "revision": 9},
            {"op": "delete", "deleted": 2},
        ],
    }
    result = protocol.txn(TxnRequest()).decode(reply(200, body))
    assert result == TxnResult(
        True,
        9,
        [
            GetOpResult([KeyValue("k", b"\xff", mod_revision=3)], 1),
            PutOpResult(9),
            DeleteOpResult(2),
        ],
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"compare": [{"key": "k", "target": "size", "op": "==", "value": 1}]}',
        b'{"success": [{"op": "put", "key": "k"}]}',
        b'{"success": [{"op": "get", "key": "k", "value": "x"}]}',
        b'{"success": [{"op": "put", "key": "k", "value": "!", "value_encoding": "base64"}]}',
        b'{"sucess": []}',
    ],
)
def test_parse_txn_refuses_bad_input(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_txn(raw)


def test_compact_and_session() -> None:
    call = protocol.compact(10)
    assert json.loads(call.body) == {"revision": 10}
    assert call.decode(reply(200, {"compact_revision": 10})) == 10
    assert protocol.open_session().kind is Kind.IDEMPOTENT
    assert protocol.compact(10).kind is Kind.IDEMPOTENT  # a second compact changes nothing


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (404, "key_not_found", errors.NotFound),
        (412, "precondition_failed", errors.PreconditionFailed),
        (410, "compacted", errors.Compacted),
        (401, "whatever", errors.Unauthorized),
        (403, "permission_denied", errors.Forbidden),
        (409, "session_expired", errors.SessionExpired),
        (409, "stale_request", errors.StaleRequest),
        (507, "no_space", errors.NoSpace),
        (400, "invalid_key", errors.BadRequest),
        (404, "not_found", errors.BadRequest),  # no such route: not a missing key
        (413, "value_too_large", errors.BadRequest),
        (503, "no_leader", errors.Unavailable),
        (500, "internal_error", errors.ServerError),
    ],
)
def test_error_codes_map_to_classes(status: int, code: str, cls: type[Exception]) -> None:
    err = protocol.error_from_reply(error(status, code, key="k"), "http://n1:1")
    assert type(err) is cls
    assert (err.status, err.code, err.details, err.endpoint) == (
        status,
        code,
        {"key": "k"},
        "http://n1:1",
    )


def test_non_json_error_is_a_server_error() -> None:
    err = protocol.error_from_reply(Reply(502, {}, b"<html>bad gateway"))
    assert isinstance(err, errors.ServerError) and err.status == 502


def test_compacted_details() -> None:
    err = protocol.error_from_reply(error(410, "compacted", compact_revision=30))
    assert isinstance(err, errors.Compacted) and err.compact_revision == 30


# -- options ---------------------------------------------------------------------------------------


def test_endpoints_are_normalized() -> None:
    opts = make_options("localhost:8081, http://127.0.0.1:8082/ ,localhost:8081")
    assert opts.endpoints == ("http://localhost:8081", "http://127.0.0.1:8082")
    assert make_options().endpoints == tuple(f"http://localhost:{p}" for p in (8081, 8082, 8083))
    for bad in ("localhost", "ftp://h:1", "h:1/path", ""):
        with pytest.raises(ValueError):
            make_options(bad)
    with pytest.raises(ValueError):
        make_options(["http://a:1", "https://b:2"])


def test_tls_options_make_https_endpoints() -> None:
    opts = make_options("h:1", verify=False)
    assert opts.endpoints == ("https://h:1",) and opts.ssl_context is not None
    with pytest.raises(ValueError):
        make_options("http://h:1", verify=False)


def test_auth_options_and_secrets_stay_out_of_repr() -> None:
    basic = make_options("h:1", username="ann", password="s3cret")
    assert basic.auth_header == "Basic " + base64.b64encode(b"ann:s3cret").decode()
    assert "s3cret" not in repr(basic) and "YW5u" not in repr(basic)
    assert make_options("h:1", token="tok").auth_header == "Bearer tok"
    with pytest.raises(ValueError):
        make_options("h:1", username="ann")
    with pytest.raises(ValueError):
        make_options("h:1", username="ann", password="x", token="t")


# -- the two clients stay twins --------------------------------------------------------------------


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_")
    }


def test_client_and_async_client_have_the_same_api() -> None:
    sync_api, async_api = _public(Client), _public(AsyncClient)
    assert sync_api.keys() == async_api.keys()
    for name, sig in sync_api.items():
        assert list(sig.parameters) == list(async_api[name].parameters), name
        for p, q in zip(sig.parameters.values(), async_api[name].parameters.values(), strict=True):
            assert (p.kind, p.default, p.annotation) == (q.kind, q.default, q.annotation), name
    for name in async_api:
        member = getattr(AsyncClient, name)
        assert inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member), name
