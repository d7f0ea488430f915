"""The fast engine answers byte for byte as aiohttp does (server/fast_http.py, fast_routes.py).

Each case is sent as raw bytes to two servers over identical fake nodes, one per engine, on a
fresh connection (a `Connection: close` request last, so a reply stream ends with EOF); the
reply bytes must be equal but for the Date header. The cases cover the hot routes' replies and
errors, requests the fast engine hands to aiohttp (other routes, HTTP/1.0, Expect, encodings,
chunked bodies, parser errors, over-long lines), pipelining that mixes both, and requests that
arrive a few bytes at a time.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from raftkv.server.config import Address, Settings
from raftkv.server.http import create_app
from raftkv.server.inputs import MAX_KEY_BYTES
from raftkv.server.limits import HttpLimits
from raftkv.server.runner import run_http
from tests.unit.server.fakes import FakeNode, SoonFakeNode, aio, make_settings

DEADLINE_S = 10.0
CLOSE = b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
# A last request the fast engine serves itself (404): with CLOSE, a chunk holding fast requests
# before it is handed to aiohttp whole (as aiohttp's parser would drop them: fast_http.py).
CLOSE_FAST = b"GET /kv/-close HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
_DATE = re.compile(rb"\r\nDate: [^\r]*")


def put(key: str, body: bytes, *headers: str, ctype: str = "text/plain") -> bytes:
    head = "".join(f"{h}\r\n" for h in (f"Content-Type: {ctype}", *headers) if h)
    return (
        f"PUT /kv/{key} HTTP/1.1\r\nHost: t\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode(
            "latin-1"
        )
        + body
    )


def req(line: str, *headers: str) -> bytes:
    return f"{line}\r\nHost: t\r\n{''.join(h + chr(13) + chr(10) for h in headers)}\r\n".encode(
        "latin-1"
    )


CASES: list[tuple[str, bytes]] = [
    ("put text", put("a", b"hello")),
    ("put json", put("j", b'{"value": "v1"}', ctype="application/json")),
    ("put bad json", put("j", b'{"value": 1', ctype="application/json")),
    ("put json not utf-8", put("j", b'{"value": "\xff"}', ctype="application/json")),
    ("put text not utf-8", put("j", b"\xff\xfe")),
    ("put binary", put("bin", b"\x00\x01\xff", ctype="application/octet-stream")),
    ("put empty body", put("e", b"")),
    ("put no content-length", req("PUT /kv/nolen HTTP/1.1")),
    ("put encoded key", put("a%2Fb%3Ac%20d", b"x")),
    ("put bad escape", put("a%FZ", b"x")),
    ("put key not utf-8", put("%FF", b"x")),
    ("put key too long", put("k" * (MAX_KEY_BYTES + 1), b"x")),
    ("put value too large", put("big", b"v" * 2000)),
    ("put if-match stale", put("a", b"x", 'If-Match: "999"')),
    ("put if-match bad", put("a", b"x", "If-Match: abc")),
    ("put if-match not ascii", put("a", b"x", "If-Match: \xc3\xa9")),
    ("put if-match not utf-8", put("a", b"x", "If-Match: \xff")),
    ("put raw utf-8 key", put("\xc3\xa9", b"x")),
    ("put too many headers", put("a", b"x", *(f"X-H{i}: 1" for i in range(129)))),
    ("put if-none-match exists", put("a", b"x", "If-None-Match: *")),
    ("put session without seq", put("a", b"x", "Raftkv-Session: 5")),
    ("get", req("GET /kv/a HTTP/1.1")),
    ("get missing", req("GET /kv/nope HTTP/1.1")),
    ("get stale", req("GET /kv/a?consistency=stale HTTP/1.1")),
    ("get lease", req("GET /kv/a?consistency=lease HTTP/1.1")),
    ("get bad consistency", req("GET /kv/a?consistency=maybe HTTP/1.1")),
    ("get revision", req("GET /kv/a?revision=1 HTTP/1.1")),
    ("get future revision", req("GET /kv/a?revision=99999 HTTP/1.1")),
    ("get bad revision", req("GET /kv/a?revision=x HTTP/1.1")),
    ("get raw", req("GET /kv/bin HTTP/1.1", "Accept: application/octet-stream")),
    ("get binary as json", req("GET /kv/bin HTTP/1.1")),
    ("get with body", req("GET /kv/a HTTP/1.1", "Content-Length: 3") + b"abc"),
    ("get http/1.0", req("GET /kv/a HTTP/1.0")),
    ("get connection close", req("GET /kv/a HTTP/1.1", "Connection: close")),
    ("get dot segment", req("GET /kv/x/../a HTTP/1.1")),
    ("get fragment", req("GET /kv/a#frag HTTP/1.1")),
    ("get absolute form", req("GET http://t/kv/a HTTP/1.1")),
    ("head", req("HEAD /kv/a HTTP/1.1")),
    ("post", req("POST /kv/a HTTP/1.1", "Content-Length: 0")),
    ("empty key", req("GET /kv/ HTTP/1.1")),
    ("no key", req("PUT /kv HTTP/1.1", "Content-Length: 0")),
    ("range", req("GET /kv?prefix= HTTP/1.1")),
    ("health", req("GET /health HTTP/1.1")),
    ("unknown route", req("GET /nowhere HTTP/1.1")),
    ("expect continue", put("exp", b"abc", "Expect: 100-continue")),
    ("expect other", put("exp", b"abc", "Expect: something")),
    ("gzip", put("gz", b"abc", "Content-Encoding: gzip")),
    ("gzip, a large body", put("gz", b"g" * 7000, "Content-Encoding: gzip")),
    (
        "chunked",
        b"PUT /kv/ch HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ),
    ("too long for the app", put("huge", b"h" * 7000)),
    ("malformed request line", b"GARBAGE\r\n\r\n"),
    ("bare LF", b"GET /kv/a HTTP/1.1\nHost: t\n\n"),
    ("line too long", req("GET /kv/" + "x" * 20000 + " HTTP/1.1")),
    ("header too long", req("GET /kv/a HTTP/1.1", "X-Big: " + "y" * 20000)),
    ("delete", req("DELETE /kv/e HTTP/1.1")),
    ("delete missing", req("DELETE /kv/e HTTP/1.1")),
    ("delete if-match", req("DELETE /kv/j HTTP/1.1", 'If-Match: "1"')),
    (
        "pipelined fast then handed off",
        put("p", b"1")
        + req("GET /kv/p HTTP/1.1")
        + req("GET /kv?prefix=p HTTP/1.1")
        + req("GET /kv/p HTTP/1.1"),
    ),
    ("pipelined handed off first", req("GET /health HTTP/1.1") + put("p", b"2")),
    ("leading empty lines", b"\r\n\r\n" + req("GET /kv/p HTTP/1.1")),
    (
        "a long pipeline, handed off at its end",
        b"".join(put(f"q{i % 7}", b"v") + req(f"GET /kv/q{i % 5} HTTP/1.1") for i in range(60))
        + req("GET /health HTTP/1.1"),
    ),
]


@asynccontextmanager
async def served(node: FakeNode, settings: Settings, engine: str) -> AsyncIterator[int]:
    settings = dataclasses.replace(
        settings, http_listen=Address("127.0.0.1", 0), http_engine=engine
    )
    runner = await run_http(create_app(node, settings), settings)
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def exchange(port: int, data: bytes, *, piece: int = 0, close: bytes = CLOSE) -> bytes:
    """Send `data` then `close` (in `piece`-byte writes if set); every reply byte until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        data += close
        step = piece or len(data)
        for at in range(0, len(data), step):
            writer.write(data[at : at + step])
            await writer.drain()
            if piece:
                await asyncio.sleep(0)  # let the server read each piece on its own
        async with asyncio.timeout(DEADLINE_S):
            out = b""
            while chunk := await reader.read(65536):
                out += chunk
        return _DATE.sub(b"\r\nDate: -", out)
    except ConnectionResetError:
        return b"<reset>"
    finally:
        writer.close()


@asynccontextmanager
async def both(
    tmp_path: Path, fast_node: FakeNode | None = None, **changes: object
) -> AsyncIterator[tuple[int, int]]:
    settings = make_settings(tmp_path, max_value_bytes=1024, **changes)
    async with AsyncExitStack() as stack:
        ports = [
            await stack.enter_async_context(served(node, settings, engine))
            for node, engine in ((FakeNode(), "aiohttp"), (fast_node or FakeNode(), "fast"))
        ]
        yield ports[0], ports[1]


@pytest.mark.parametrize("soon", [False, True], ids=["coroutines", "callbacks"])
@aio
async def test_replies_are_byte_for_byte_those_of_aiohttp(tmp_path: Path, soon: bool) -> None:
    """Also with a node that has the calls without a coroutine (SoonFakeNode): the fast
    engine then answers stale GETs at once and the other hot requests from callbacks."""
    node = SoonFakeNode() if soon else FakeNode()
    close = CLOSE_FAST if soon else CLOSE
    async with both(tmp_path, node) as (slow, fast):
        for name, data in CASES:
            expected = await exchange(slow, data, close=close)
            got = await exchange(fast, data, close=close)
            assert got == expected, name
            assert expected.startswith(b"HTTP/1."), name  # each case gets a reply
    if isinstance(node, SoonFakeNode):
        assert node.soon_calls > 50  # the cases did take the paths without a coroutine


@aio
async def test_requests_in_small_pieces(tmp_path: Path) -> None:
    async with both(tmp_path) as (slow, fast):
        for name, data in CASES[:3] + CASES[-3:]:
            for piece in (1, 7):
                assert await exchange(fast, data, piece=piece) == await exchange(
                    slow, data, piece=piece
                ), (name, piece)


@aio
async def test_followers_forward_the_same_way(tmp_path: Path) -> None:
    """A follower's forward (here to a closed port: 503 leader_unreachable) and a follower that
    got a forwarded write (503 not_leader) reply alike on both engines."""
    settings = make_settings(tmp_path)
    peers = {"node-1": "127.0.0.1:1", "node-2": "127.0.0.1:2", "node-3": "127.0.0.1:3"}
    async with AsyncExitStack() as stack:
        ports = [
            await stack.enter_async_context(
                served(FakeNode("node-2", leader_id="node-1", http_peers=peers), settings, e)
            )
            for e in ("aiohttp", "fast")
        ]
        for data in (
            put("f", b"v"),
            req("DELETE /kv/f HTTP/1.1"),
            put("f", b"v", "X-Raftkv-Forwarded-By: node-3"),
            req("GET /kv/f HTTP/1.1"),
        ):
            assert await exchange(ports[1], data) == await exchange(ports[0], data)


@aio
async def test_keepalive_client_mixing_routes(tmp_path: Path) -> None:
    """One pooled client connection: fast requests, then one handed to aiohttp, then more."""
    async with both(tmp_path) as (slow, fast):
        for port in (slow, fast):
            conn = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=conn) as session:
                base = f"http://127.0.0.1:{port}"
                headers = {"Content-Type": "text/plain"}
                seen = []
                for _ in range(3):
                    async with session.put(f"{base}/kv/m", data=b"v", headers=headers) as r:
                        seen.append((r.status, (await r.json())["revision"]))
                async with session.get(f"{base}/kv?prefix=m") as r:
                    assert (await r.json())["count"] == 1
                async with session.get(f"{base}/kv/m") as r:
                    assert (await r.json())["version"] == 3
                assert seen == [(200, 1), (200, 2), (200, 3)]


@aio
async def test_fast_engine_limits(tmp_path: Path) -> None:
    """A 408 for a trickled body and a shared connection cap, on the fast engine itself."""
    limits = HttpLimits(body_timeout_ms=200, max_connections=2, keepalive_timeout_ms=300)
    settings = dataclasses.replace(
        make_settings(tmp_path), http_listen=Address("127.0.0.1", 0), http_limits=limits
    )
    node = FakeNode()
    runner = await run_http(create_app(node, settings), settings)
    port = runner.addresses[0][1]
    try:
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        w1.write(b"PUT /kv/slow HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab")
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(req("GET /cluster/local HTTP/1.1"))  # handed to aiohttp, still counted
        async with asyncio.timeout(DEADLINE_S):
            assert (await r2.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert (await exchange(port, b"")).startswith(b"HTTP/1.1 503")
            reply = await r1.read()  # 408, then closed by the server
        assert reply.startswith(b"HTTP/1.1 408 Request Timeout")
        assert b'"code":"body_timeout"' in reply and b"Connection: close" in reply
        assert node.data == {}
        w1.close()
        w2.close()
        # An idle keep-alive connection that only ever saw fast requests is closed too.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(req("GET /kv/none HTTP/1.1"))
        async with asyncio.timeout(DEADLINE_S):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 404")
            while await reader.read(65536):  # ends when the server closes it
                pass
        writer.close()
    finally:
        await runner.cleanup()


def test_engine_is_a_config_choice(tmp_path: Path) -> None:
    assert make_settings(tmp_path).http_engine == "fast"
    with pytest.raises(Exception, match="http_engine"):
        from raftkv.server.config import load_settings

        path = tmp_path / "bad.yaml"
        path.write_text((tmp_path / "cluster.yaml").read_text() + "server:\n  http_engine: nginx\n")
        load_settings({"config": path, "node_id": "node-1"}, env={})


@aio
async def test_auth_replies_are_the_same(tmp_path: Path) -> None:
    """auth.enabled: 401s (with WWW-Authenticate) and an authorized write, both engines."""
    from tests.unit.server.test_server_auth import AuthFakeNode

    settings = make_settings(tmp_path, auth_enabled=True, root_password="rootpw")
    root = "Authorization: Basic " + base64.b64encode(b"root:rootpw").decode()
    async with AsyncExitStack() as stack:
        ports = [
            await stack.enter_async_context(served(AuthFakeNode(), settings, e))
            for e in ("aiohttp", "fast")
        ]
        async with asyncio.timeout(DEADLINE_S):  # each leader bootstraps root and its key
            for port in ports:
                # The reply ends with the CLOSE request's own 200: look at the first status line.
                whoami = req("GET /auth/whoami HTTP/1.1", root)
                while not (await exchange(port, whoami)).startswith(b"HTTP/1.1 200 "):
                    await asyncio.sleep(0.02)
        for data in (
            put("x", b"v"),
            put("x", b"v", "Authorization: Basic " + base64.b64encode(b"root:no").decode()),
            put("x", b"v", "Authorization: Bearer not.a-token"),
            put("x", b"v", "Authorization: Digest abc"),
            put("x", b"v", root),
            req("GET /kv/x HTTP/1.1", root),
            req("DELETE /kv/x HTTP/1.1", root),
        ):
            assert await exchange(ports[1], data) == await exchange(ports[0], data), data
