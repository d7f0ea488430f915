"""The lean forwarding client: every failure point attributed (NotSent / MaybeSent), one request
per connection at a time, pooled connections reused only when safe; and the Forwarder's
at-most-once rules on top of it (a session write re-sent exactly once, a write without a
session never)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from aiohttp.test_utils import make_mocked_request

from raftkv.server.errors import ApiError
from raftkv.server.forward import Forwarder
from raftkv.server.forward_client import LeaderClient, MaybeSent, NotSent, request_head
from tests.unit.server.fakes import aio, client_for, closed_port, make_settings, read_body
from tests.unit.server.test_server_forward import follower_of

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

# What the raw leader does with one request: bytes to answer (then keep the connection),
# Closing(bytes) to answer and close, or one of the actions below.
DROP = "drop"  # close without a reply
HANG = "hang"  # never answer (the connection stays open)


class Closing(bytes):
    """Write these bytes, then close the connection."""


Action = bytes | str


class RawLeader:
    """A raw TCP "leader": reads whole requests (Content-Length bodies), records them, and
    answers each as `script(n)` says, n counting requests from 0."""

    def __init__(self, script: Callable[[int], Action], ssl_context: ssl.SSLContext | None = None):
        self.script = script
        self.ssl_context = ssl_context
        self.requests: list[bytes] = []  # each request's head
        self.peers: list[str] = []  # each connection's client address
        self.closed = asyncio.Event()  # a connection was closed by the client
        self.received = asyncio.Event()  # a request arrived
        self._server: asyncio.Server | None = None
        self._handlers: list[tuple[asyncio.Task[None], asyncio.StreamWriter]] = []

    @property
    def connections(self) -> int:
        return len(self.peers)

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peername")[0])
        task = asyncio.current_task()
        assert task is not None
        self._handlers.append((task, writer))
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if not exc.partial:
                        self.closed.set()
                    return
                except ConnectionError:
                    self.closed.set()
                    return
                await read_body(reader, head)
                n = len(self.requests)
                self.requests.append(head)
                self.received.set()
                action = self.script(n)
                if action == DROP:
                    return
                if action == HANG:
                    await reader.read()  # until the client goes away
                    self.closed.set()
                    return
                assert isinstance(action, bytes)
                writer.write(action)
                await writer.drain()
                if isinstance(action, Closing):
                    return
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> RawLeader:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self.ssl_context
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for _, writer in self._handlers:
            writer.transport.abort()  # the handler reads EOF (or a reset) and returns
        await asyncio.gather(*(task for task, _ in self._handlers), return_exceptions=True)


def client(**kw: object) -> LeaderClient:
    args: dict[str, object] = {"source_ip": None, "connect_timeout_s": 2.0, "idle_timeout_s": 30.0}
    args.update(kw)
    return LeaderClient(**args)  # type: ignore[arg-type]


def put(address: str) -> bytes:
    return request_head("PUT", "/kv/k", address, [("Content-Length", "1")])


@aio
async def test_pooled_connection_is_reused_one_request_at_a_time() -> None:
    async with RawLeader(lambda n: OK) as leader:
        c = client()
        for _ in range(3):
            reply = await c.request(leader.address, put(leader.address), b"v")
            assert (reply.status, reply.body) == (200, b"{}")
            assert ("Content-Type", "application/json") in reply.headers
        # Two at once need two connections: no pipelining on one.
        await asyncio.gather(*(c.request(leader.address, put(leader.address), b"v") for _ in "ab"))
        await c.close()
    assert len(leader.requests) == 5
    assert leader.connections == 2


@aio
async def test_refused_connect_is_not_sent() -> None:
    c = client()
    with pytest.raises(NotSent, match="cannot connect"):
        await c.request(f"127.0.0.1:{closed_port()}", put("x"), b"v")
    with pytest.raises(NotSent, match="bad leader address"):
        await c.request("no-port", put("x"), b"v")
    await c.close()


@aio
async def test_waiting_for_a_slot_past_the_connect_timeout_is_not_sent() -> None:
    async with RawLeader(lambda n: HANG) as leader:
        c = client(max_connections=1, connect_timeout_s=0.2)
        first = asyncio.create_task(c.request(leader.address, put(leader.address), b"v"))
        await leader.received.wait()
        with pytest.raises(NotSent, match="no free connection"):
            await c.request(leader.address, put(leader.address), b"v")
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await leader.closed.wait()  # cancelling aborted the connection
        await c.close()
    assert len(leader.requests) == 1


@aio
async def test_drop_after_reading_is_maybe_sent_and_never_resent() -> None:
    async with RawLeader(lambda n: DROP) as leader:
        c = client()
        with pytest.raises(MaybeSent, match="closed before the reply"):
            await c.request(leader.address, put(leader.address), b"v")
        await c.close()
    assert len(leader.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [
        OK[:30],  # half a status line and headers, then closed
        OK[:-1],  # all but the last body byte, then closed
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",  # short body, then closed
        b"NOT HTTP AT ALL\r\n\r\n",  # refused by the parser
    ],
)
def test_broken_reply_is_maybe_sent(answer: bytes) -> None:
    async def main() -> None:
        async with RawLeader(lambda n: Closing(answer)) as leader:
            c = client()
            with pytest.raises(MaybeSent):
                await c.request(leader.address, put(leader.address), b"v")
            await c.close()
        assert len(leader.requests) == 1

    asyncio.run(main())


@aio
async def test_close_and_bytes_after_a_reply_are_not_reused() -> None:
    close = OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
    extra = OK + b"HTTP/1.1 200 OK\r\n"  # the start of a reply nobody asked for
    for answer in (close, extra):
        async with RawLeader(lambda n, a=answer: a) as leader:  # type: ignore[misc]
            c = client()
            for _ in range(2):
                reply = await c.request(leader.address, put(leader.address), b"v")
                assert (reply.status, reply.body) == (200, b"{}")
            await c.close()
        assert leader.connections == 2


@aio
async def test_interim_reply_is_skipped() -> None:
    async with RawLeader(lambda n: b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n" + OK) as leader:
        c = client()
        reply = await c.request(leader.address, put(leader.address), b"v")
        assert (reply.status, reply.body) == (200, b"{}")
        assert [name for name, _ in reply.headers] == ["Content-Type", "Content-Length"]
        await c.request(leader.address, put(leader.address), b"v")  # and reused
        await c.close()
    assert leader.connections == 1


@aio
async def test_reply_framed_by_close_is_maybe_sent() -> None:
    async with RawLeader(lambda n: Closing(b"HTTP/1.1 200 OK\r\n\r\n{}")) as leader:
        c = client()
        with pytest.raises(MaybeSent):
            await c.request(leader.address, put(leader.address), b"v")
        await c.close()
    assert len(leader.requests) == 1


@aio
async def test_idle_connection_the_leader_closed_is_skipped_not_a_504() -> None:
    # The leader closes a kept-alive connection once idle (its keep-alive timeout): the pool
    # notices (connection_lost) and the next request goes on a new connection, answered.
    async with RawLeader(lambda n: Closing(OK) if n == 0 else OK) as leader:
        c = client()
        await c.request(leader.address, put(leader.address), b"v")
        [pool] = c._idle.values()
        async with asyncio.timeout(5):
            while not pool[0].closed:  # the leader's FIN reaches our protocol
                await asyncio.sleep(0.005)
        reply = await c.request(leader.address, put(leader.address), b"v")
        assert reply.status == 200
        await c.close()
    assert len(leader.requests) == 2
    assert leader.connections == 2


@aio
async def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    async with RawLeader(lambda n: OK) as leader:
        c = client(idle_timeout_s=0.05)
        await c.request(leader.address, put(leader.address), b"v")
        await asyncio.wait_for(leader.closed.wait(), 5)  # closed by us, while idle
        await c.request(leader.address, put(leader.address), b"v")
        await c.close()
    assert leader.connections == 2


@aio
async def test_fresh_never_takes_a_pooled_connection() -> None:
    async with RawLeader(lambda n: OK) as leader:
        c = client()
        await c.request(leader.address, put(leader.address), b"v")
        await c.request(leader.address, put(leader.address), b"v", fresh=True)
        await c.close()
    assert leader.connections == 2


@aio
async def test_source_address_is_bound() -> None:
    async with RawLeader(lambda n: OK) as leader:
        c = client(source_ip="127.0.0.2")
        await c.request(leader.address, put(leader.address), b"v")
        await c.close()
    assert leader.peers == ["127.0.0.2"]


@aio
async def test_tls_verify_failure_is_not_sent() -> None:
    server_ca, other_ca = trustme.CA(), trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    async with RawLeader(lambda n: OK, server_ctx) as leader:
        for trusted, ok in ((other_ca, False), (server_ca, True)):
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            trusted.configure_trust(ctx)
            c = client(ssl_context=ctx)
            if ok:
                reply = await c.request(leader.address, put(leader.address), b"v")
                assert reply.status == 200
            else:
                with pytest.raises(NotSent, match="CERTIFICATE_VERIFY_FAILED"):
                    await c.request(leader.address, put(leader.address), b"v")
            await c.close()
    assert len(leader.requests) == 1  # only the verified connection carried a request


def test_request_head_refuses_injection() -> None:
    assert request_head("PUT", "/kv/a?b=c", "h:1", [("Raftkv-Seq", "3")]) == (
        b"PUT /kv/a?b=c HTTP/1.1\r\nHost: h:1\r\nRaftkv-Seq: 3\r\n\r\n"
    )
    for headers in ([("A", "x\r\nB: y")], [("A: b", "x")], [("A\n", "x")], [("", "x")]):
        with pytest.raises(ValueError):
            request_head("PUT", "/kv/a", "h:1", headers)
    with pytest.raises(ValueError):
        request_head("PUT", "/kv/a HTTP/1.1\r\nX: y", "h:1", [])


# -- the Forwarder's rules on top -------------------------------------------------------------


@aio
async def test_session_write_dropped_twice_is_sent_exactly_twice(tmp_path: Path) -> None:
    session = {"Raftkv-Session": "7", "Raftkv-Seq": "3"}
    async with RawLeader(lambda n: DROP) as leader:
        follower = follower_of(leader.address)
        async with client_for(follower, make_settings(tmp_path, "node-2")) as http:
            resp = await http.put("/kv/k", data=b"v", headers=session)
            assert resp.status == 504
            assert (await resp.json())["code"] == "outcome_unknown"
            assert len(leader.requests) == 2  # the first send, and exactly one re-send
            resp = await http.put("/kv/k", data=b"v")  # no session: never re-sent
            assert resp.status == 504
    assert len(leader.requests) == 3
    assert leader.connections == 3  # the re-send went on a fresh connection


@aio
async def test_total_timeout_after_sending_is_504_and_sent_once() -> None:
    async with RawLeader(lambda n: HANG) as leader:
        # Generous timeouts (a loaded box's local connect can take 0.1 s: then
        # nothing was sent, a 503); the hanging leader makes the total timeout fire after it.
        f = Forwarder("node-2", source_ip=None, connect_timeout_s=0.9, total_timeout_s=1.0)
        # With a session too: a timeout ends the forward, it is not a failure that re-sends.
        req = make_mocked_request(
            "PUT", "/kv/k", headers={"Raftkv-Session": "7", "Raftkv-Seq": "1"}
        )
        with pytest.raises(ApiError) as err:
            await f.forward(req, b"v", "node-1", leader.address)
        assert (err.value.status, err.value.code) == (504, "outcome_unknown")
        await leader.closed.wait()  # the connection was aborted, not pooled
        await f.close()
    assert len(leader.requests) == 1


@aio
async def test_forwarded_request_bytes() -> None:
    async with RawLeader(lambda n: OK) as leader:
        address = leader.address
        f = Forwarder("node-2", source_ip=None, connect_timeout_s=1.0, total_timeout_s=5.0)
        headers = {
            "Authorization": "Bearer t",
            "If-Match": '"3"',
            "Content-Type": "text/plain",
            "X-Not-Forwarded": "1",
        }
        req = make_mocked_request("PUT", "/kv/a%2Fb?x=1", headers=headers)
        resp = await f.forward(req, b"body", "node-1", leader.address)
        assert resp.status == 200
        await f.close()
    assert leader.requests == [
        b"PUT /kv/a%2Fb?x=1 HTTP/1.1\r\n"
        + f"Host: {address}\r\n".encode()
        + b"X-Raftkv-Forwarded-By: node-2\r\n"
        b"Content-Type: text/plain\r\n"
        b"Authorization: Bearer t\r\n"
        b'If-Match: "3"\r\n'
        b"Content-Length: 4\r\n\r\n"
    ]
