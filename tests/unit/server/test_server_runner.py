"""run_http: a real listener whose parser errors are JSON and whose line limits fit 4 KiB keys."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web

from raftkv.server.config import Address
from raftkv.server.http import create_app
from raftkv.server.runner import run_http
from tests.unit.server.fakes import FakeNode, aio, make_settings


@asynccontextmanager
async def serving_runner(tmp_path: Path, node: FakeNode) -> AsyncIterator[web.AppRunner]:
    settings = make_settings(tmp_path)
    settings = dataclasses.replace(settings, http_listen=Address("127.0.0.1", 0))
    runner = await run_http(create_app(node, settings), settings)
    try:
        yield runner
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serving(tmp_path: Path, node: FakeNode) -> AsyncIterator[tuple[str, int]]:
    async with serving_runner(tmp_path, node) as runner:
        host, port = runner.addresses[0][:2]
        yield host, port


async def exchange(addr: tuple[str, int], request: bytes) -> tuple[int, dict[str, object], bytes]:
    reader, writer = await asyncio.open_connection(*addr)
    try:
        writer.write(request)
        raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body), head


@aio
async def test_parser_errors_are_json(tmp_path: Path) -> None:
    async with serving(tmp_path, FakeNode()) as addr:
        status, body, head = await exchange(addr, b"GARBAGE\r\n\r\n")
        assert status == 400
        assert body["code"] == "bad_request_line"
        assert b"application/json" in head

        long_line = b"GET /kv/" + b"%41" * 6000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        status, body, _ = await exchange(addr, long_line)
        assert status == 400
        assert body["code"] == "line_too_long"
        assert isinstance(body["error"], str)

        long_header = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n"
        status, body, _ = await exchange(addr, long_header)
        assert (status, body["code"]) == (400, "line_too_long")

        bad_length = b"PUT /kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n"
        status, body, _ = await exchange(addr, bad_length)
        assert status == 400
        assert body["code"] == "bad_request"


@aio
async def test_fully_encoded_4096_byte_key_through_run_http(tmp_path: Path) -> None:
    node = FakeNode()
    key = ":/" * 2048
    path = "/kv/" + "".join(f"%{b:02X}" for b in key.encode())
    async with serving(tmp_path, node) as addr:
        request = (
            f"PUT {path}?consistency=linearizable HTTP/1.1\r\nHost: x\r\n"
            "Content-Length: 1\r\nConnection: close\r\n\r\nv"
        ).encode()
        status, body, _ = await exchange(addr, request)
        assert (status, body["key"]) == (200, key)
        request = f"GET {path}%41 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        status, body, _ = await exchange(addr, request)
        assert (status, body["code"]) == (414, "key_too_large")
    assert node.data == {key: "v"}


@aio
async def test_refused_body_does_not_hold_the_connection(tmp_path: Path) -> None:
    # aiohttp drains ("lingers on") a body the handler did not read, for up to 10 s, and that
    # read is not woken when the client goes away; handler_cancellation ends it.
    async with serving_runner(tmp_path, FakeNode()) as runner:
        host, port = runner.addresses[0][:2]
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        assert (await reader.readline()).startswith(b"HTTP/1.1 413")
        writer.close()
        await writer.wait_closed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while runner.server is not None and runner.server.connections:
            assert loop.time() < deadline, "connection still held after the client left"
            await asyncio.sleep(0.01)
