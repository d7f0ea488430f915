"""The one-shot client: one request per connection, and failures attributed to before/after send."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from raftkv.chaos import httpclient
from raftkv.chaos.httpclient import MaybeSent, NotSent, encode_request, parse_head

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def with_server(handler: Handler, body: Callable[[int], Awaitable[None]]) -> int:
    """Serve `handler` on 127.0.0.1, run `body(port)`, return how many connections came in."""
    seen = 0

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        seen += 1
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(counted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await body(port)
    finally:
        server.close()
        await server.wait_closed()
    return seen


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


def test_encode_and_parse() -> None:
    raw = encode_request("PUT", "127.0.0.2", 80, "/kv/a", b"v")
    assert raw.startswith(b"PUT /kv/a HTTP/1.1\r\n")
    assert b"Connection: close\r\n" in raw and raw.endswith(b"\r\n\r\nv")
    assert parse_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\n") == (404, 3)
    assert parse_head(b"HTTP/1.1 200 OK\r\n\r\n") == (200, None)
    for bad in (
        b"SSH-2.0\r\n\r\n",
        b"HTTP/1.1 abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    ):
        with pytest.raises(ValueError):
            parse_head(bad)


def test_a_reply_is_read_by_its_length() -> None:
    got: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await read_request(reader))
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"a": true}')
        await writer.drain()
        await asyncio.sleep(0.5)  # keeps the connection open: the client must not wait for EOF

    async def body(port: int) -> None:
        reply = await httpclient.request(
            "PUT", "127.0.0.1", port, "/kv/k", body=b"hello", source_ip="127.0.0.10", timeout_s=0.3
        )
        assert (reply.status, reply.json()) == (200, {"a": True})

    assert asyncio.run(with_server(handler, body)) == 1
    assert got[0].startswith(b"PUT /kv/k HTTP/1.1") and got[0].endswith(b"hello")


def test_connect_refused_is_not_sent() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NotSent, match="refused"):
        asyncio.run(httpclient.request("GET", "127.0.0.1", port, "/kv/k"))


def test_failures_after_connecting_may_have_been_sent_and_are_never_retried() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # the request arrived: a write may now happen

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(1)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")

    for handler, reason in ((hang_up, "closed"), (silent, "reply_timeout"), (garbage, "closed")):

        async def body(port: int, reason: str = reason) -> None:
            with pytest.raises(MaybeSent, match=reason):
                await httpclient.request("DELETE", "127.0.0.1", port, "/kv/k", timeout_s=0.2)

        assert asyncio.run(with_server(handler, body)) == 1  # exactly one attempt
