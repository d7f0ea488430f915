"""HTTP hardening (server/limits.py): each attack of issue 10 item 6 against a served app.

Every test here failed on the main branch before the hardening: a gzip body became a value past
max_value_bytes, invalid gzip was a 500, a trickled body or an idle connection was held for an
hour, connections and buffered body bytes were unbounded, /debug/keys could not be turned off
and returned 10,000 values a page whatever their size.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import msgspec

from raftkv.codec.commands import encode_command
from raftkv.codec.wire import MAX_FRAME_BYTES, encode_frame
from raftkv.kv.commands import Put
from raftkv.raft.messages import AppendEntries
from raftkv.raft.types import Entry, Index, NodeId, Term
from raftkv.runtime.inspect import NodeInspector
from raftkv.server.inputs import MAX_KEY_BYTES
from raftkv.server.limits import HttpLimits, largest_value_bytes
from tests.unit.server.fakes import FakeNode, aio, client_for, make_settings

DEADLINE_S = 10.0  # generous: the machine is shared; every wait below ends on a condition


async def raw_exchange(port: int, data: bytes) -> tuple[int, dict[str, object]]:
    """Send `data` on a fresh connection; the reply's status and JSON body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(DEADLINE_S):
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = await reader.readexactly(length)
        return status, json.loads(body)
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader) -> None:
    async with asyncio.timeout(DEADLINE_S):
        while await reader.read(65536):
            pass


@aio
async def test_gzip_body_is_refused_not_inflated(tmp_path: Path) -> None:
    node = FakeNode()
    settings = make_settings(tmp_path, max_value_bytes=1024)
    bomb = gzip.compress(b"a" * (3 << 20))  # ~3 KiB on the wire, 3 MiB inflated
    async with client_for(node, settings) as client:
        resp = await client.put(
            "/kv/bomb",
            data=bomb,
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        )
        assert resp.status == 415
        body = await resp.json()
        assert body["code"] == "unsupported_content_encoding"
        assert body["content_encoding"] == "gzip"
        # Invalid gzip: a 500 before; now refused the same way, never decoded.
        resp = await client.put(
            "/kv/bad", data=b"not gzip at all", headers={"Content-Encoding": "gzip"}
        )
        assert resp.status == 415
        resp = await client.put("/kv/ok", data=b"plain", headers={"Content-Encoding": "identity"})
        assert resp.status == 200
    assert node.data == {"ok": "plain"}


@aio
async def test_broken_chunked_body_is_400_json(tmp_path: Path) -> None:
    async with client_for(FakeNode(), make_settings(tmp_path)) as client:
        status, body = await raw_exchange(
            client.port,
            b"PUT /kv/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nabc\r\n0\r\n\r\n",
        )
    assert status == 400
    assert body["code"] in ("body_read_error", "bad_request")  # parser or our read


@aio
async def test_trickled_body_times_out_with_408(tmp_path: Path) -> None:
    limits = HttpLimits(body_timeout_ms=300)
    node = FakeNode()
    async with client_for(node, make_settings(tmp_path, http_limits=limits)) as client:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        try:
            writer.write(b"PUT /kv/slow HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
            await writer.drain()
            async with asyncio.timeout(DEADLINE_S):
                head = await reader.readuntil(b"\r\n\r\n")
                rest = await reader.read()  # the server closes the connection after the reply
        finally:
            writer.close()
    assert head.startswith(b"HTTP/1.1 408")
    assert msgspec.json.decode(rest)["code"] == "body_timeout"
    assert node.data == {}


@aio
async def test_idle_keepalive_connection_is_closed(tmp_path: Path) -> None:
    limits = HttpLimits(keepalive_timeout_ms=300)
    async with client_for(FakeNode(), make_settings(tmp_path, http_limits=limits)) as client:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
            await writer.drain()
            async with asyncio.timeout(DEADLINE_S):
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            await closed_by_server(reader)  # idle: closed by the server, not by us
        finally:
            writer.close()


@aio
async def test_connections_past_the_cap_get_503(tmp_path: Path) -> None:
    limits = HttpLimits(max_connections=2)
    async with client_for(FakeNode(), make_settings(tmp_path, http_limits=limits)) as client:
        held = [await asyncio.open_connection("127.0.0.1", client.port) for _ in range(2)]
        try:
            for reader, writer in held:  # both served: the cap is not below its value
                writer.write(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
                async with asyncio.timeout(DEADLINE_S):
                    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            status, body = await raw_exchange(
                client.port, b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
            )
            assert (status, body["code"], body["max_connections"]) == (
                503,
                "too_many_connections",
                2,
            )
        finally:
            for _, writer in held:
                writer.close()
        # Slots free up when connections close.
        async with asyncio.timeout(DEADLINE_S):
            while True:
                resp = await client.get("/health")
                if resp.status == 200:
                    break
                await asyncio.sleep(0.05)


@aio
async def test_inflight_body_bytes_are_capped(tmp_path: Path) -> None:
    limits = HttpLimits(max_inflight_body_bytes=1000)
    node = FakeNode()
    async with client_for(node, make_settings(tmp_path, http_limits=limits)) as client:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        try:
            # A body of 800 bytes announced, 3 sent: its 800 bytes stay reserved while it trickles.
            writer.write(b"PUT /kv/a HTTP/1.1\r\nHost: a\r\nContent-Length: 800\r\n\r\nabc")
            await writer.drain()
            async with asyncio.timeout(DEADLINE_S):
                while True:
                    resp = await client.put("/kv/b", data=b"x" * 300)
                    if resp.status == 503:  # once the first request is being read
                        break
                    assert resp.status == 200
                    await asyncio.sleep(0.02)
            assert (await resp.json())["code"] == "server_busy"
            assert resp.headers["Retry-After"] == "1"
            writer.write(b"x" * 797)  # the first body completes and frees its reservation
            await writer.drain()
            async with asyncio.timeout(DEADLINE_S):
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert (await client.put("/kv/b", data=b"x" * 300)).status == 200
        finally:
            writer.close()


def test_largest_value_fits_in_one_peer_frame() -> None:
    largest = largest_value_bytes()
    big = 2**63 - 1
    node = NodeId("n" * 63)
    data = encode_command(Put("k" * MAX_KEY_BYTES, "v" * largest))
    msg = AppendEntries(
        Term(big),
        node,
        node,
        Index(big),
        Term(big),
        (Entry(Term(big), Index(big), data=data),),
        Index(big),
    )
    assert len(encode_frame(msg)) <= MAX_FRAME_BYTES
    assert largest > MAX_FRAME_BYTES - (1 << 20)  # and the headroom is not absurd


class _Sm:
    def __init__(self, data: dict[str, str]) -> None:
        self.data = dict(sorted(data.items()))
        self.applied_index = 5

    def items(self, prefix: str, limit: int, after: str | None) -> list[tuple[str, str]]:
        out = [(k, v) for k, v in self.data.items() if k.startswith(prefix)]
        out = [(k, v) for k, v in out if after is None or k > after]
        return out[:limit]


class _InspectableFake(FakeNode):
    def __init__(self, data: dict[str, str]) -> None:
        super().__init__()
        self._inspector = NodeInspector(SimpleNamespace(sm=_Sm(data), check_readable=lambda: None))  # type: ignore[arg-type]

    def inspector(self) -> NodeInspector:
        return self._inspector


@aio
async def test_debug_keys_pages_are_capped_by_bytes(tmp_path: Path) -> None:
    data = {f"k{i:02d}": "v" * 1000 for i in range(40)}
    async with client_for(_InspectableFake(data), make_settings(tmp_path)) as client:
        resp = await client.get("/debug/keys?limit=100&max_bytes=5000")
        body = await resp.json()
        assert resp.status == 200
        assert body["count"] == 4  # 4 x 1003 bytes fit in 5000, a fifth does not
        assert body["next_after"] == "k03"
        # Paging through collects everything exactly once.
        seen, after = [], None
        while True:
            query = "/debug/keys?limit=100&max_bytes=5000" + (f"&after={after}" if after else "")
            page = await (await client.get(query)).json()
            seen += [i["key"] for i in page["items"]]
            if (after := page["next_after"]) is None:
                break
        assert seen == sorted(data)


@aio
async def test_debug_endpoints_can_be_disabled(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, debug_endpoints=False)
    async with client_for(_InspectableFake({"a": "secret"}), settings) as client:
        for path in ("/debug/keys", "/debug/log", "/debug/keys?prefix=a"):
            resp = await client.get(path)
            assert resp.status == 404
            assert (await resp.json())["code"] == "debug_disabled"
            assert "secret" not in await resp.text()
