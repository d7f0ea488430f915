"""Both transports against a misbehaving local server: a write is never sent twice.

The server counts the requests it reads; on `/drop` it reads a whole request and closes the
connection without answering — exactly when aiohttp's client would silently re-send a PUT.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from raftkv.client import AsyncClient, Client, OutcomeUnknown, Unavailable
from raftkv.client.async_transport import AsyncTransport
from raftkv.client.engine import MaybeSent, NotSent, Send
from raftkv.client.sync_transport import SyncTransport
from raftkv.client.wire import Reply
from tests.unit.client.fake_server import Server


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send(port: int, target: str, *, fresh: bool, method: str = "PUT") -> Send:
    return Send(f"http://127.0.0.1:{port}", method, target, (), b"x", 2.0, 1.0, fresh)


def test_sync_client_write_dropped_after_send_is_sent_once(server: Server) -> None:
    with Client([f"127.0.0.1:{server.port}"]) as kv, pytest.raises(OutcomeUnknown):
        kv.put("drop", "v")
    assert server.requests.count("PUT /kv/drop") == 1


def test_async_client_write_dropped_after_send_is_sent_once(server: Server) -> None:
    async def main() -> None:
        async with AsyncClient([f"127.0.0.1:{server.port}"]) as kv:
            await kv.put("k", "v")  # warm the pooled session: a reused connection exists
            with pytest.raises(OutcomeUnknown):
                await kv.put("drop", "v")
            with pytest.raises(OutcomeUnknown):
                await kv.delete("drop")

    asyncio.run(main())
    assert server.requests.count("PUT /kv/drop") == 1
    assert server.requests.count("DELETE /kv/drop") == 1


@pytest.mark.parametrize("fresh", [True, False])
def test_async_transport_attributes_failures(server: Server, fresh: bool) -> None:
    async def main() -> None:
        t = AsyncTransport(None)
        try:
            assert isinstance(await t.send(send(server.port, "/kv/k", fresh=fresh)), Reply)
            assert isinstance(await t.send(send(server.port, "/kv/drop", fresh=fresh)), MaybeSent)
            assert isinstance(await t.send(send(free_port(), "/kv/k", fresh=fresh)), NotSent)
        finally:
            await t.close()

    asyncio.run(main())
    assert server.requests == ["PUT /kv/k", "PUT /kv/drop"]


@pytest.mark.parametrize("fresh", [True, False])
def test_sync_transport_attributes_failures(server: Server, fresh: bool) -> None:
    t = SyncTransport(None)
    try:
        assert isinstance(t.send(send(server.port, "/kv/k", fresh=fresh)), Reply)
        assert isinstance(t.send(send(server.port, "/kv/k", fresh=fresh)), Reply)
        dropped = t.send(send(server.port, "/kv/drop", fresh=fresh))
        assert isinstance(dropped, MaybeSent) and dropped.reused is not fresh
        assert isinstance(t.send(send(free_port(), "/kv/k", fresh=fresh)), NotSent)
    finally:
        t.close()
    assert server.requests == ["PUT /kv/k", "PUT /kv/k", "PUT /kv/drop"]


def test_reads_retry_after_a_drop_and_fail_over(server: Server) -> None:
    dead = free_port()
    with Client([f"127.0.0.1:{dead}", f"127.0.0.1:{server.port}"], timeout=1.5) as kv:
        assert kv.put("k", "v").key == "k"  # refused by the dead node: sent to the live one
        with pytest.raises(Unavailable):
            kv.get("drop")  # a read is retried until the deadline, then Unavailable
    assert server.requests.count("GET /kv/drop") > 1
