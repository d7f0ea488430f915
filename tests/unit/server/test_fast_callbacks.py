"""The fast engine's paths without a coroutine (fast_http.py, fast_routes.handle_soon): a stale
GET answered inside `data_received`, linearizable GETs, PUTs and DELETEs answered from the
callback of the node's future. Pipelined requests are answered in order whatever path each
takes; auth and the body gate still hold; a failed or cancelled future is answered (or
counted) as the coroutine would."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import cast

from raftkv.runtime.api import HaltReport, NodeHalted, NoLeaderError, OperationTimeout
from raftkv.runtime.waiters import ProposalLost
from raftkv.server.config import Address
from raftkv.server.fast_http import FastProtocol
from raftkv.server.fast_routes import FAST_ROUTES, FastRoutes, FastServer
from raftkv.server.http import create_app
from raftkv.server.metrics_routes import CANCELLED
from raftkv.server.runner import run_http
from tests.unit.server.fakes import FakeNode, SoonFakeNode, aio, make_settings
from tests.unit.server.test_server_auth import AuthFakeNode
from tests.unit.server.test_server_engines import CLOSE_FAST, exchange, put, req, served

DEADLINE_S = 10.0


def replies(stream: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each reply in a stream of replies with Content-Length bodies."""
    out = []
    while stream:
        head, _, rest = stream.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.startswith(b"Content-Length")
        )
        out.append((status, rest[:length]))
        stream = rest[length:]
    return out


@asynccontextmanager
async def fast_app(tmp_path: Path, node: FakeNode) -> AsyncIterator[tuple[FastRoutes, int]]:
    settings = dataclasses.replace(
        make_settings(tmp_path), http_listen=Address("127.0.0.1", 0), http_engine="fast"
    )
    app = create_app(node, settings)
    runner = await run_http(app, settings)
    try:
        yield app[FAST_ROUTES], runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(DEADLINE_S):
        while not condition():
            await asyncio.sleep(0.005)


@aio
async def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    """A linearizable GET waits for its fence while a stale GET (answerable at once), a PUT, a
    stale GET of the key just written, a DELETE and a stale GET of the deleted key arrive on
    the same connection: the replies come in request order, each request taken after the
    reply before it (so the stale GETs see the writes ahead of them)."""
    node = SoonFakeNode()
    node.seed("a", "1")
    node.seed("b", "2")
    node.hold = True
    async with fast_app(tmp_path, node) as (routes, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(req("GET /kv/a HTTP/1.1"))
        await until(lambda: node.soon_calls == 1)  # taken, its fence held
        writer.write(
            req("GET /kv/b?consistency=stale HTTP/1.1")
            + put("c", b"3")
            + req("GET /kv/c?consistency=stale HTTP/1.1")
            + req("DELETE /kv/b HTTP/1.1")
            + req("GET /kv/b?consistency=stale HTTP/1.1")
            + CLOSE_FAST
        )
        await until(lambda: routes.gate.in_flight == 1)  # PUT c's headers were read
        assert node.soon_calls == 1  # nothing overtook the GET in progress
        node.hold = False
        node.release()
        async with asyncio.timeout(DEADLINE_S):
            stream = await reader.read()  # until the server closes (CLOSE_FAST)
        writer.close()
    got = replies(stream)
    assert [status for status, _ in got] == [200, 200, 200, 200, 200, 404, 404]
    assert b'"key":"a","value":"1"' in got[0][1]
    assert b'"key":"b","value":"2"' in got[1][1]
    assert b'"message":"Key-value pair stored successfully"' in got[2][1]
    assert b'"key":"c","value":"3"' in got[3][1]
    assert b'"message":"Key deleted successfully"' in got[4][1]
    assert node.soon_calls == 7  # each of them (and the close) took a path without a coroutine


@asynccontextmanager
async def engines(tmp_path: Path) -> AsyncIterator[tuple[Served, Served]]:
    """aiohttp's engine over a FakeNode (coroutines), the fast one over a SoonFakeNode."""
    settings = make_settings(tmp_path, max_value_bytes=1024)
    async with AsyncExitStack() as stack:
        out = []
        for node, engine in ((FakeNode(), "aiohttp"), (SoonFakeNode(), "fast")):
            node.seed("a", "1")
            port = await stack.enter_async_context(served(node, settings, engine))
            out.append(Served(node, port))
        yield out[0], out[1]


@dataclasses.dataclass
class Served:
    node: FakeNode
    port: int


@aio
async def test_a_failed_fence_is_answered_as_the_coroutine_answers_it(tmp_path: Path) -> None:
    """The node's future fails (timeout, no leader, halted): the same reply bytes as aiohttp's
    engine over the coroutine, on the callback path (linearizable GET, PUT, DELETE) and on the
    stale GET's path inside data_received (halted: raised at once)."""
    report = HaltReport(index=7, term=2, tag=99, error="unknown kind", action="upgrade", since="-")
    async with engines(tmp_path) as (slow, fast):
        assert isinstance(fast.node, SoonFakeNode)
        for failure in (OperationTimeout("late"), NoLeaderError("none"), NodeHalted(report)):
            for data in (
                req("GET /kv/a HTTP/1.1"),
                put("a", b"2"),
                req("DELETE /kv/a HTTP/1.1"),
                req("GET /kv/a?consistency=stale HTTP/1.1"),
            ):
                before = fast.node.soon_calls
                slow.node.fail_with = fast.node.fail_with = failure
                got = await exchange(fast.port, data, close=CLOSE_FAST)
                expected = await exchange(slow.port, data, close=CLOSE_FAST)
                assert got == expected, (failure, data)
                assert got.split(b" ", 2)[1] in (b"503", b"504"), (failure, data)
                assert fast.node.soon_calls == before + 2, (failure, data)  # and the close
        assert fast.node.data == slow.node.data == {"a": "1"}


@aio
async def test_auth_still_guards_the_stale_get(tmp_path: Path) -> None:
    """With auth on, a stale GET without credentials is refused (401) as before: the path
    inside data_received, which has no auth check, is not taken."""

    class AuthSoonNode(SoonFakeNode, AuthFakeNode):
        pass

    node = AuthSoonNode()
    node.seed("a", "1")
    settings = make_settings(tmp_path, auth_enabled=True, root_password="rootpw")
    root = "Authorization: Basic " + base64.b64encode(b"root:rootpw").decode()
    async with served(node, settings, "fast") as port:
        async with asyncio.timeout(DEADLINE_S):  # the leader bootstraps root and its key
            while not (await exchange(port, req("GET /auth/whoami HTTP/1.1", root))).startswith(
                b"HTTP/1.1 200 "
            ):
                await asyncio.sleep(0.02)
        for data in (req("GET /kv/a?consistency=stale HTTP/1.1"), req("GET /kv/a HTTP/1.1")):
            refused = await exchange(port, data, close=CLOSE_FAST)
            assert refused.startswith(b"HTTP/1.1 401 "), refused
            assert b'"code":"unauthenticated"' in refused
        allowed = await exchange(port, req("GET /kv/a?consistency=stale HTTP/1.1", root))
        assert allowed.startswith(b"HTTP/1.1 200 ") and b'"value":"1"' in allowed
    assert node.soon_calls == 0  # auth on: the coroutine serves everything


@aio
async def test_bodies_are_released_and_cancellations_counted(tmp_path: Path) -> None:
    """The body gate's reservation of a PUT served from a callback is released after its reply,
    and when the client goes away before it (the future is cancelled, the request counted as
    "cancelled", as a cancelled coroutine's); a write lost to another leader's entry is
    proposed again by the coroutine, once."""
    node = SoonFakeNode()
    async with fast_app(tmp_path, node) as (routes, port):
        await _releases_and_counts(node, routes, port)


async def _releases_and_counts(node: SoonFakeNode, routes: FastRoutes, port: int) -> None:
    observed: list[tuple[str, int]] = []
    observe = routes.observe

    def recording(method: str, status: int, seconds: float) -> None:
        observed.append((method, status))
        observe(method, status, seconds)

    routes.observe = recording  # type: ignore[method-assign]
    assert (await exchange(port, put("k", b"v" * 100), close=CLOSE_FAST)).startswith(
        b"HTTP/1.1 200 "
    )
    assert routes.gate.in_flight == 0
    # The client goes while its PUT waits: the future is cancelled, the body released.
    node.delay_s = 60.0
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(put("gone", b"x" * 50))
    await until(lambda: routes.gate.in_flight > 0)  # reserved from its headers on
    writer.close()
    await until(lambda: routes.gate.in_flight == 0 and ("PUT", CANCELLED) in observed)
    node.delay_s = 0.0
    # A proposal overwritten by another leader's entry: RetryWrite, the coroutine writes.
    node.fail_with = ProposalLost("replaced")
    node.fail_once = True
    got = await exchange(port, put("r", b"1"), close=CLOSE_FAST)
    assert got.startswith(b"HTTP/1.1 200 ") and b'"revision":' in got
    assert [c for c in node.calls if c[:2] == ("put", "r")] == [("put", "r", "1")] * 2
    assert node.data["r"] == "1"
    assert routes.gate.in_flight == 0


class _Transport:
    """A transport that records what is written; abort/close end the connection (next turn)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.protocol: asyncio.Protocol | None = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        if self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)
            self.protocol = None

    abort = close


def connected(
    tmp_path: Path, node: FakeNode, *, body_timeout_s: float
) -> tuple[FastServer, FastProtocol, _Transport]:
    """The fast engine's protocol for one connection over a recording transport."""
    app = create_app(node, make_settings(tmp_path))
    server = FastServer(
        app[FAST_ROUTES],
        None,
        keepalive_s=60,
        body_timeout_s=body_timeout_s,
        max_line_bytes=8190,
        max_field_bytes=8190,
    )
    protocol, transport = server(), _Transport()
    transport.protocol = protocol
    protocol.connection_made(cast(asyncio.Transport, transport))
    return server, protocol, transport


@aio
async def test_an_aborted_write_is_not_proposed_again(tmp_path: Path) -> None:
    """Shutdown aborts a connection whose PUT waits for its proposal: the future is cancelled,
    the body released, nothing sent and nothing proposed again (a cancelled future is not a
    RetryWrite). Fails against a protocol that leaves the future alone when the connection
    goes (the body stays reserved)."""
    node = SoonFakeNode()
    node.hold = True
    server, protocol, transport = connected(tmp_path, node, body_timeout_s=10)
    protocol.data_received(put("k", b"v"))
    assert node.soon_calls == 1 and server.routes.gate.in_flight == 1
    protocol.abort()
    await until(lambda: not server.connections)
    for _ in range(3):
        await asyncio.sleep(0)  # a retry, if any, would have run by now
    assert node.calls == [("put", "k", "v")]  # proposed once
    assert transport.written == []
    assert server.routes.gate.in_flight == 0


@aio
async def test_a_body_timeout_behind_a_reply_in_progress_closes_after_that_reply(
    tmp_path: Path,
) -> None:
    """A PUT waits for its proposal while the next pipelined request's body stops coming: the
    body timer fires, and the connection closes after the PUT's reply, not before it (before,
    it closed at once: the PUT was applied and its client never heard)."""
    node = SoonFakeNode()
    node.hold = True
    server, protocol, transport = connected(tmp_path, node, body_timeout_s=0.05)
    protocol.data_received(put("k", b"v"))
    assert node.soon_calls == 1
    protocol.data_received(b"PUT /kv/j HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
    await until(lambda: server.routes.gate.in_flight == 1)  # the second body's bytes released
    assert transport.protocol is not None  # still open: the PUT's reply is owed
    node.hold = False
    node.release()
    await until(lambda: transport.protocol is None)  # closed, after...
    got = replies(b"".join(transport.written))
    assert [status for status, _ in got] == [200]  # ...the PUT's reply
    assert server.routes.gate.in_flight == 0
