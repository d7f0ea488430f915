"""The /kv routes on a leader: replies in the seed's shape and every input error as JSON."""

from __future__ import annotations

import asyncio
import io
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from raftkv.runtime.api import NodeStopping, NoLeaderError, NotLeaderError, OperationTimeout
from raftkv.server.errors import error_middleware
from tests.unit.server.fakes import FakeNode, aio, client_for, make_settings

MIB = 1 << 20


def big_json(value: str) -> dict[str, Any]:
    """Request kwargs for a large JSON body (aiohttp warns about large raw bytes bodies)."""
    body = json.dumps({"value": value}).encode()
    return {"data": io.BytesIO(body), "headers": {"Content-Type": "application/json"}}


def pct(text: str) -> str:
    """Percent-encode every byte (the longest form a key can take in a URL)."""
    return "".join(f"%{b:02X}" for b in text.encode("utf-8"))


@aio
async def test_put_json_get_delete_seed_replies(tmp_path: Path) -> None:
    node = FakeNode()
    async with client_for(node, make_settings(tmp_path)) as client:
        resp = await client.put("/kv/user:john", json={"value": "John Doe, Software Engineer"})
        assert resp.status == 200
        assert await resp.json() == {
            "key": "user:john",
            "value": "John Doe, Software Engineer",
            "message": "Key-value pair stored successfully",
            "revision": 1,
        }
        assert resp.headers["ETag"] == '"1"'
        assert node.data == {"user:john": "John Doe, Software Engineer"}

        resp = await client.get("/kv/user:john")
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == {
            "key": "user:john",
            "value": "John Doe, Software Engineer",
            "create_revision": 1,
            "mod_revision": 1,
            "version": 1,
        }
        assert resp.headers["ETag"] == '"1"'
        assert node.calls[-1] == ("read", True)

        resp = await client.delete("/kv/user:john")
        assert resp.status == 200
        assert await resp.json() == {
            "key": "user:john",
            "message": "Key deleted successfully",
            "revision": 2,
        }
        assert node.data == {}


@aio
async def test_raw_body_is_the_value(tmp_path: Path) -> None:
    node = FakeNode()
    async with client_for(node, make_settings(tmp_path)) as client:
        # curl -d 'hello world' sends application/x-www-form-urlencoded: the body is the value.
        resp = await client.put(
            "/kv/test",
            data=b"hello world",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert (await resp.json())["value"] == "hello world"
        resp = await client.put("/kv/t2", data="ünï {json} ✓".encode(), headers={})
        assert resp.status == 200
        resp = await client.put("/kv/empty", data=b"")
        assert resp.status == 200
    assert node.data == {"test": "hello world", "t2": "ünï {json} ✓", "empty": ""}


@aio
async def test_missing_key_is_404_for_get_and_delete(tmp_path: Path) -> None:
    async with client_for(FakeNode(), make_settings(tmp_path)) as client:
        for method in ("GET", "DELETE"):
            resp = await client.request(method, "/kv/nope")
            assert resp.status == 404
            assert await resp.json() == {
                "error": "key not found",
                "code": "key_not_found",
                "key": "nope",
            }


@aio
async def test_consistency_parameter(tmp_path: Path) -> None:
    node = FakeNode()
    node.seed("k", "v")
    async with client_for(node, make_settings(tmp_path)) as client:
        assert (await client.get("/kv/k?consistency=stale")).status == 200
        assert node.calls[-1] == ("read", False)
        assert (await client.get("/kv/k?consistency=linearizable")).status == 200
        assert node.calls[-1] == ("read", True)
        resp = await client.get("/kv/k?consistency=eventual")
        assert resp.status == 400
        body = await resp.json()
        assert body["code"] == "invalid_consistency"
        assert body["consistency"] == "eventual"


@aio
async def test_json_body_errors(tmp_path: Path) -> None:
    node = FakeNode()
    cases = [
        (b'{"value": 1}', "invalid_value"),
        (b'{"value": null}', "invalid_value"),
        (b"[1]", "invalid_value"),
        (b"{}", "invalid_value"),
        (b'{"value": "x"', "invalid_json"),
        (b"nope", "invalid_json"),
        (b"", "invalid_json"),
        (b'{"value": "\\ud800"}', "invalid_json"),  # a lone surrogate is not text
        (b'{"value": "\xff"}', "invalid_encoding"),
        (b"[" * 100_000, "invalid_value"),
        (b'{"value": "v", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "invalid_json"),
    ]
    async with client_for(node, make_settings(tmp_path)) as client:
        for body, code in cases:
            resp = await client.put(
                "/kv/k", data=body, headers={"Content-Type": "application/json; charset=utf-8"}
            )
            assert resp.status == 400, body[:20]
            reply = await resp.json()
            assert reply["code"] == code, (body[:20], reply)
            assert isinstance(reply["error"], str)
    assert node.calls == []


@aio
async def test_raw_body_must_be_utf8(tmp_path: Path) -> None:
    node = FakeNode()
    async with client_for(node, make_settings(tmp_path)) as client:
        resp = await client.put("/kv/k", data=b"\xff\xfe", headers={"Content-Type": "text/plain"})
        assert resp.status == 400
        assert (await resp.json())["code"] == "invalid_encoding"
    assert node.calls == []


@aio
async def test_keys_with_slash_colon_unicode_and_newline(tmp_path: Path) -> None:
    node = FakeNode()
    keys = ["a/b", "a:b", "a//b/", "a/../b", "%41", "ключ ✓", "line\nbreak", "sp ace", "q?x#y"]
    async with client_for(node, make_settings(tmp_path)) as client:
        for key in keys:
            resp = await client.put("/kv/" + pct(key), json={"value": key})
            assert resp.status == 200, key
            assert (await resp.json())["key"] == key
        # Unencoded '/' and ':' work too.
        resp = await client.get("/kv/a/b")
        assert (await resp.json()).items() >= {"key": "a/b", "value": "a/b"}.items()
        resp = await client.get("/kv/a:b")
        assert (await resp.json()).items() >= {"key": "a:b", "value": "a:b"}.items()
    assert set(node.data) == set(keys)


@aio
async def test_bad_keys(tmp_path: Path) -> None:
    async with client_for(FakeNode(), make_settings(tmp_path)) as client:
        for path in ("/kv/", "/kv", "/kv/%FF", "/kv/%zz", "/kv/a%2", "/kv/%C3%28"):
            resp = await client.get(URL(path, encoded=True))
            assert resp.status == 400, path
            assert (await resp.json())["code"] == "invalid_key", path
        # '%FF' is rejected, '%25FF' is the three-character key "%FF": they never collide.
        assert (await client.put("/kv/%25FF", data=b"v")).status == 200
        assert (await (await client.get("/kv/%25FF")).json())["key"] == "%FF"


@aio
async def test_bare_kv_says_how_to_name_a_key_or_a_range(tmp_path: Path) -> None:
    # A new user's first `curl localhost:8081/kv` should learn what to send, not only "empty key".
    async with client_for(FakeNode(), make_settings(tmp_path)) as client:
        for method in ("GET", "DELETE", "PUT"):
            resp = await client.request(method, "/kv")
            assert resp.status == 400, method
            body = await resp.json()
            assert body["code"] == "invalid_key", method
            assert "/kv/{key}" in body["error"], method
            if method != "PUT":
                assert "?prefix=" in body["error"], method


@aio
async def test_4096_byte_key_fully_encoded_fits_and_4097_is_414(tmp_path: Path) -> None:
    node = FakeNode()
    key = "a/b:" * 1024
    assert len(key.encode()) == 4096
    async with client_for(node, make_settings(tmp_path)) as client:
        path = "/kv/" + pct(key)
        assert len(path) > 12_000  # far beyond aiohttp's default request-line limit (8190)
        resp = await client.put(path + "?x=1", json={"value": "v"})
        assert resp.status == 200
        assert (await resp.json())["key"] == key
        resp = await client.get(path)
        assert (await resp.json())["value"] == "v"

        for too_long in ("/kv/" + pct(key + "x"), "/kv/" + "x" * 4097, "/kv/" + "é" * 2049):
            resp = await client.put(too_long, json={"value": "v"})
            assert resp.status == 414
            body = await resp.json()
            assert body["code"] == "key_too_large"
            assert body["max_bytes"] == 4096
    assert list(node.data) == [key]


@aio
async def test_values_over_the_limit_are_413_json(tmp_path: Path) -> None:
    node = FakeNode()
    two_mib = b"x" * (2 * MIB)
    async with client_for(node, make_settings(tmp_path)) as client:
        # Raw body with a Content-Length: refused before reading it.
        resp = await client.put(
            "/kv/big", data=io.BytesIO(two_mib), headers={"Content-Type": "text/plain"}
        )
        assert resp.status == 413
        assert await resp.json() == {
            "error": "value longer than 1048576 bytes",
            "code": "value_too_large",
            "max_bytes": MIB,
        }

        # Chunked raw body (no Content-Length): refused while streaming.
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(32):
                yield b"y" * (64 * 1024)

        resp = await client.put("/kv/big", data=chunks(), headers={"Content-Type": "text/plain"})
        assert resp.status == 413
        assert (await resp.json())["code"] == "value_too_large"

        # JSON: the decoded value is checked too.
        resp = await client.put("/kv/big", **big_json("z" * (MIB + 1)))
        assert resp.status == 413
        assert (await resp.json())["code"] == "value_too_large"
        # A multi-byte value counts bytes, not characters.
        resp = await client.put("/kv/big", **big_json("é" * (MIB // 2 + 1)))
        assert resp.status == 413

        # Exactly at the limit is fine, in both forms; heavy JSON escaping still fits.
        assert (await client.put("/kv/a", data=io.BytesIO(b"x" * MIB))).status == 200
        resp = await client.put("/kv/b", **big_json("\x01" * MIB))
        assert resp.status == 200
        # Far too large for even JSON: refused from Content-Length alone.
        resp = await client.put("/kv/c", **big_json("q" * (7 * MIB)))
        assert resp.status == 413
    assert sorted(node.data) == ["a", "b"]


@aio
async def test_expect_continue_refuses_oversized_body_before_it_is_sent(tmp_path: Path) -> None:
    async with client_for(FakeNode(), make_settings(tmp_path)) as client:
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(
            b"PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n"
        )
        status_line = await reader.readline()
        assert status_line.startswith(b"HTTP/1.1 413"), status_line
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"application/json" in head
        writer.close()
        await writer.wait_closed()

        # Within the limit: 100 Continue, then the body, then the reply.
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(
            b"PUT /kv/ok HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"hi")
        reply = await reader.read()
        assert reply.startswith(b"HTTP/1.1 200")
        assert reply.endswith(b'"message":"Key-value pair stored successfully","revision":1}')
        writer.close()
        await writer.wait_closed()


@aio
async def test_runtime_outcomes_map_to_status_codes(tmp_path: Path) -> None:
    node = FakeNode()
    cases: list[tuple[BaseException, int, str]] = [
        (NoLeaderError(), 503, "no_leader"),
        (OperationTimeout(), 504, "timeout"),
        (NodeStopping(), 503, "node_stopping"),
    ]
    async with client_for(node, make_settings(tmp_path)) as client:
        for exc, status, code in cases:
            node.fail_with = exc
            for method, path, kw in (
                ("PUT", "/kv/k", {"json": {"value": "v"}}),
                ("GET", "/kv/k", {}),
                ("DELETE", "/kv/k", {}),
            ):
                resp = await client.request(method, path, **kw)
                assert resp.status == status, (method, exc)
                assert (await resp.json())["code"] == code
                if code == "no_leader":
                    assert resp.headers["Retry-After"] == "1"
        # A read that meets NotLeaderError (not expected from the runtime) is a clean 503.
        node.fail_with = NotLeaderError("node-2", None)
        resp = await client.get("/kv/k")
        assert resp.status == 503
        assert (await resp.json())["code"] == "not_leader"


@aio
async def test_request_timeout_is_504_outcome_unknown(tmp_path: Path) -> None:
    node = FakeNode()
    node.hang = True
    async with client_for(node, make_settings(tmp_path, request_timeout_ms=50)) as client:
        resp = await client.put("/kv/k", json={"value": "v"})
        assert resp.status == 504
        body = await resp.json()
        assert body["code"] == "timeout"
        assert "may or may not" in body["error"]


@aio
async def test_aiohttp_errors_and_unexpected_exceptions_are_json(tmp_path: Path) -> None:
    node = FakeNode()
    async with client_for(node, make_settings(tmp_path)) as client:
        resp = await client.get("/nope")
        assert resp.status == 404
        assert await resp.json() == {"error": "no such endpoint", "code": "not_found"}
        resp = await client.post("/kv/k", data=b"v")
        assert resp.status == 405
        assert (await resp.json())["code"] == "method_not_allowed"
        assert "PUT" in resp.headers["Allow"]
        resp = await client.get("/kv/k", headers={"Expect": "teapot"})
        assert resp.status == 417
        assert (await resp.json())["code"] == "expectation_failed"

        node.fail_with = RuntimeError("boom")  # a bug in the node: still a JSON reply
        resp = await client.get("/kv/k")
        assert resp.status == 500
        assert await resp.json() == {"error": "internal server error", "code": "internal_error"}


@aio
async def test_error_middleware_converts_aiohttp_413() -> None:
    # aiohttp raises 413 itself when a handler reads past client_max_size.
    async def read_all(request: web.Request) -> web.Response:
        await request.read()
        return web.Response()

    app = web.Application(middlewares=[error_middleware], client_max_size=10)
    app.router.add_put("/x", read_all)
    async with TestClient(TestServer(app)) as client:
        resp = await client.put("/x", data=b"0123456789abc")
        assert resp.status == 413
        assert (await resp.json())["code"] == "request_too_large"


@aio
async def test_health_ready_and_local(tmp_path: Path) -> None:
    node = FakeNode()
    async with client_for(node, make_settings(tmp_path)) as client:
        resp = await client.get("/health")
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})
        resp = await client.get("/ready")
        assert resp.status == 200
        assert (await resp.json())["status"] == "ready"
        node.ready = False
        resp = await client.get("/ready")
        assert resp.status == 503
        body: dict[str, Any] = await resp.json()
        assert (body["status"], body["code"]) == ("not_ready", "not_ready")
        resp = await client.get("/cluster/local")
        assert await resp.json() == {
            "node_id": "node-1",
            "role": "Leader",
            "term": 1,
            "leader_id": "node-1",
            "commit_index": 7,
            "applied_index": 6,
            "last_index": 8,
            "raft_address": "127.0.0.1:9001",
            "http_address": "127.0.0.1:1",
            "format_version": 1,
            "command_set": 1,
        }


@aio
async def test_random_inputs_never_produce_a_500(tmp_path: Path) -> None:
    rng = random.Random(20240115)
    node = FakeNode()
    alphabet = [*"abc:/%?#.+ ", "%2F", "%3A", "%FF", "%C3%A9", "%0A", "%", "%G1", "é"]
    bodies = [b"", b"v", b'{"value": "x"}', b'{"value": 5}', b"\xff", b'{"value": "\\udfff"}', b"{"]
    async with client_for(node, make_settings(tmp_path, max_value_bytes=64)) as client:
        for _ in range(300):
            key = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            path = quote("/kv/" + key, safe="/%:?#=&+") if rng.random() < 0.5 else "/kv/" + key
            body = rng.choice(bodies) if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 100))
            headers = {"Content-Type": rng.choice(["application/json", "text/plain", "x/y"])}
            method = rng.choice(["PUT", "GET", "DELETE", "POST", "PATCH"])
            resp = await client.request(method, URL(path, encoded=True), data=body, headers=headers)
            assert resp.status < 500, (method, path, body)
            reply = await resp.json()
            if resp.status >= 400:
                assert isinstance(reply["error"], str)
                assert reply["code"].replace("_", "").isalpha()
