"""Writes forwarded over the peer link (server/peer_forward.py): same replies as over HTTP, and
forward.py's at-most-once rules on this path too. Two real apps, two real peer transports."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from raftkv.codec.forward import FORWARDING_VERSION, ForwardBatch, ForwardedReply, ForwardReplies
from raftkv.raft.types import NodeId
from raftkv.runtime.api import NotLeaderError
from raftkv.server.fast_routes import FAST_ROUTES, FastRoutes
from raftkv.server.forward_client import TimedOut
from raftkv.server.peer_forward import PeerForwardClient, relayed, reply_of
from raftkv.transport._common import TransportTuning
from raftkv.transport.tcp import PeerTransport
from tests.unit.server.fakes import (
    Client,
    FakeNode,
    SoonFakeNode,
    aio,
    client_for,
    closed_port,
    make_settings,
)
from tests.unit.server.test_server_auth import ROOT, AuthFakeNode, auth_client, basic
from tests.unit.transport.transport_helpers import Node, eventually

L, F = NodeId("node-1"), NodeId("node-2")
FAST = TransportTuning(backoff_initial=0.005, backoff_max=0.05, stable_after=0.2)


class LinkedNode(FakeNode):
    """A FakeNode that offers its peer transport for forwarding, as RaftKVNode.forward_link;
    `gate`, when set, holds every write until it is set."""

    link: PeerTransport | None = None
    gate: asyncio.Event | None = None

    def forward_link(self) -> PeerTransport | None:
        return self.link

    async def _enter(self, *call: object, write: bool) -> None:
        await super()._enter(*call, write=write)
        if write and self.gate is not None:
            await self.gate.wait()


class LinkedAuthNode(AuthFakeNode, LinkedNode):
    pass


class LinkedSoonNode(SoonFakeNode, LinkedNode):
    """A LinkedNode with the calls without a coroutine (the leader then runs forwarded
    requests without a task: PeerForwardServer._take)."""


class SoonFollower(LinkedSoonNode):
    """A follower with the calls without a coroutine and `leader_elsewhere`, as RaftKVNode: the
    fast engine forwards its writes from callbacks (`http._Api.forward_soon`)."""

    def leader_elsewhere(self) -> NotLeaderError | None:
        if self.leader_id is None or self.leader_id == self.node_id:
            return None
        return NotLeaderError(self.leader_id, self.http_peers.get(self.leader_id))


async def link(leader: LinkedNode, follower: LinkedNode, **kw: Any) -> tuple[Node, Node]:
    """Real peer transports between the two fakes, both announcing forwarding."""
    a = await Node(L, forwarding=FORWARDING_VERSION, tuning=FAST).start()
    b = await Node(F, forwarding=FORWARDING_VERSION, tuning=FAST, **kw).start()
    a.transport.update_peer(F, b.addr)
    b.transport.update_peer(L, a.addr)
    leader.link, follower.link = a.transport, b.transport
    await eventually(lambda: b.transport.forwarding_version(L) == FORWARDING_VERSION)
    await eventually(lambda: a.transport.forwarding_version(F) == FORWARDING_VERSION)
    return a, b


@contextlib.asynccontextmanager
async def pair(
    tmp_path: Path,
    *,
    http_to_leader: bool = False,
    auth: bool = False,
    peer: bool = True,
    soon: bool = False,
    soon_follower: bool = False,
    **settings: Any,
) -> AsyncIterator[tuple[LinkedNode, LinkedNode, Client, Client]]:
    """A leader and a follower app linked by peer transports (unless not `peer`). Unless
    `http_to_leader`, the follower's HTTP route to the leader is a closed port: a reply then
    proves the peer link carried it. `soon`/`soon_follower`: that node has the calls without
    a coroutine (it serves forwarded requests / forwards from callbacks)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    cls = LinkedAuthNode if auth else LinkedNode
    leader = LinkedSoonNode("node-1") if soon else cls("node-1")
    follower = (SoonFollower if soon_follower else cls)("node-2", leader_id="node-1")
    async with contextlib.AsyncExitStack() as stack:
        if peer:  # before the apps start: they take the link then
            a, b = await link(leader, follower)
            stack.push_async_callback(a.stop)
            stack.push_async_callback(b.stop)
        if auth:
            leader_client = await stack.enter_async_context(auth_client(tmp_path, leader))  # type: ignore[arg-type]
        else:
            leader_settings = make_settings(tmp_path, "node-1", **settings)
            leader_client = await stack.enter_async_context(client_for(leader, leader_settings))
        leader_http = leader_client.address if http_to_leader else f"127.0.0.1:{closed_port()}"
        follower.http_peers["node-1"] = leader_http
        if auth:
            settings = {"auth_enabled": True, **settings}
        follower_settings = make_settings(tmp_path, "node-2", **settings)
        client = await stack.enter_async_context(client_for(follower, follower_settings))
        yield leader, follower, leader_client, client


async def reply(resp: aiohttp.ClientResponse) -> tuple[int, dict[str, str], bytes]:
    """Status, the headers a forwarded reply may differ in removed (Date), body."""
    headers = {k.lower(): v for k, v in resp.headers.items() if k.lower() != "date"}
    return resp.status, headers, await resp.read()


OCTETS = "application/octet-stream"
REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("PUT", "/kv/company", {"json": {"value": "Distributed Systems Corp"}}),
    ("PUT", "/kv/a%2Fb%3Ac", {"data": b"raw \xc3\xa9"}),
    (
        "PUT",
        "/kv/bin",
        {"data": b"\x00\xff", "headers": {"Content-Type": "application/octet-stream"}},
    ),
    ("PUT", "/kv/company", {"data": b"x", "headers": {"If-Match": '"9"'}}),  # 412, the key's rev
    ("PUT", "/kv/fresh", {"data": b"x", "headers": {"If-None-Match": "*"}}),
    ("PUT", "/kv/bad", {"data": b'{"value": 1}', "headers": {"Content-Type": "application/json"}}),
    ("PUT", "/kv/big", {"data": b"x" * 2000}),  # 413 from the leader's own limit
    ("PUT", "/kv/s", {"data": b"x", "headers": {"Raftkv-Session": "9", "Raftkv-Seq": "1"}}),
    ("DELETE", "/kv/missing", {}),
    ("DELETE", "/kv/a%2Fb%3Ac", {}),
]


FOLLOWERS = pytest.mark.parametrize("soon_follower", [False, True], ids=["coroutine", "soon"])


@FOLLOWERS
@aio
async def test_replies_are_the_replies_of_http_forwarding(
    tmp_path: Path, soon_follower: bool
) -> None:
    """Every reply -- successes, the leader's errors, headers that matter -- is the same over
    the peer link as over HTTP forwarding, from identical leaders; whether the follower
    forwards from a coroutine or from callbacks (the fast engine's hot path)."""
    got: dict[str, list[tuple[int, dict[str, str], bytes]]] = {}
    for mode in ("peer", "http"):
        over_http = mode == "http"
        async with pair(
            tmp_path / mode,
            http_to_leader=over_http,
            peer=not over_http,
            soon_follower=soon_follower,
            max_value_bytes=1000,
        ) as (leader, _, _, client):
            got[mode] = [
                await reply(await client.request(method, path, **kw))
                for method, path, kw in REQUESTS
            ]
            assert leader.data.get("company") == "Distributed Systems Corp"
    assert got["peer"] == got["http"]
    statuses = [status for status, _, _ in got["peer"]]
    assert statuses == [200, 200, 200, 412, 200, 400, 413, 409, 404, 200]
    assert got["peer"][0][1]["etag"] == '"1"'


@aio
async def test_a_leader_without_tasks_replies_the_same(tmp_path: Path) -> None:
    """A leader whose node has the calls without a coroutine answers forwarded requests from
    callbacks (the session write still by the coroutine): the same replies as HTTP forwarding
    to a leader with coroutines only, and every body and in-flight count released after."""
    got: dict[str, list[tuple[int, dict[str, str], bytes]]] = {}
    for mode in ("peer", "http"):
        over_http = mode == "http"
        async with pair(
            tmp_path / mode,
            http_to_leader=over_http,
            peer=not over_http,
            soon=not over_http,
            max_value_bytes=1000,
        ) as (leader, _, leader_client, client):
            got[mode] = [
                await reply(await client.request(method, path, **kw))
                for method, path, kw in REQUESTS
            ]
            if isinstance(leader, SoonFakeNode):
                assert leader.soon_calls >= 6  # the plain PUTs and DELETEs took the callbacks
                assert leader_client.app is not None
                assert leader_client.app[FAST_ROUTES].gate.in_flight == 0
    assert got["peer"] == got["http"]
    statuses = [status for status, _, _ in got["peer"]]
    assert statuses == [200, 200, 200, 412, 200, 400, 413, 409, 404, 200]
    assert got["peer"][0][1]["etag"] == '"1"'


@aio
async def test_a_follower_forwards_from_callbacks_without_a_coroutine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a follower with the calls without a coroutine, plain PUTs and DELETEs go over the
    link from callbacks: `PeerForwardClient.forward` (the coroutine) carries only the session
    write; every body and in-flight slot is released after (fails against a follower that
    still forwards from a task, or leaks its slots)."""
    coroutine_forwards: list[str] = []
    forward = PeerForwardClient.forward

    async def counting(self: PeerForwardClient, request: Any, body: bytes, leader: str) -> Any:
        coroutine_forwards.append(request.path)
        return await forward(self, request, body, leader)

    monkeypatch.setattr(PeerForwardClient, "forward", counting)
    async with pair(tmp_path, soon=True, soon_follower=True, max_value_bytes=1000) as (
        leader,
        _,
        _,
        client,
    ):
        statuses = [
            (await client.request(method, path, **kw)).status for method, path, kw in REQUESTS
        ]
        assert statuses == [200, 200, 200, 412, 200, 400, 413, 409, 404, 200]
        assert coroutine_forwards == ["/kv/s"]  # the session write only
        assert leader.data.get("company") == "Distributed Systems Corp"
        assert client.app is not None
        assert client.app[FAST_ROUTES].gate.in_flight == 0
        api_peer = [p for p in _peer_forwardings(client)]
        assert api_peer and all(not p.client._in_flight for p in api_peer)


def _peer_forwardings(client: Client) -> list[Any]:
    """The app's PeerForwarding (http._Api._peer), found through the fast routes' handler."""
    assert client.app is not None
    routes = client.app[FAST_ROUTES]
    put_soon = routes._soon["PUT"]
    api = put_soon.__self__._calls  # type: ignore[attr-defined]  # KvRoutes -> http._Api
    return [api._peer] if api._peer is not None else []


@pytest.mark.parametrize("broken", ["handle_soon", "settle"])
@aio
async def test_a_handler_bug_on_a_forwarded_request_is_a_500_and_leaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    """A bug in the callback path (simulated) answers the forwarded request 500 with a JSON
    body, as the fast engine does for a direct request, and releases its body's bytes: before,
    the follower waited for its deadline (504) and the leader's gate and in-flight count
    leaked for good."""

    def bug(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(FastRoutes, broken, bug)
    async with pair(tmp_path, peer=True, soon=True) as (_, _, leader_client, client):
        resp = await client.put("/kv/k", data=b"v")
        assert resp.status == 500
        assert (await resp.json())["code"] == "internal_error"
        assert leader_client.app is not None
        assert leader_client.app[FAST_ROUTES].gate.in_flight == 0


@FOLLOWERS
@aio
async def test_the_peer_link_is_used_and_batched(tmp_path: Path, soon_follower: bool) -> None:
    async with pair(tmp_path, soon_follower=soon_follower) as (leader, _, _, client):
        sent: list[int] = []

        async def put(i: int) -> int:
            resp = await client.put(f"/kv/k{i}", data=b"v")
            return resp.status

        link = leader.link
        assert link is not None
        handler = link._forward_handler
        assert handler is not None

        def counting(peer: NodeId, frame: Any) -> None:
            sent.append(len(frame.requests))
            handler(peer, frame)

        link._forward_handler = counting
        assert await asyncio.gather(*(put(i) for i in range(20))) == [200] * 20
        assert sum(sent) == 20 and len(sent) < 20  # several requests per frame
        assert {f"k{i}" for i in range(20)} <= set(leader.data)


@FOLLOWERS
@aio
async def test_link_lost_after_sending_is_504_and_not_resent(
    tmp_path: Path, soon_follower: bool
) -> None:
    async with pair(tmp_path, http_to_leader=True, soon_follower=soon_follower) as (
        leader,
        _,
        _,
        client,
    ):
        leader.gate = asyncio.Event()
        pending = asyncio.ensure_future(client.put("/kv/k", data=b"v"))
        await eventually(lambda: ("put", "k", "v") in leader.calls)
        assert leader.link is not None
        await leader.link.stop()  # the link ends with the write in the leader's hands
        resp = await pending
        assert resp.status == 504
        assert (await resp.json())["code"] == "outcome_unknown"
        assert leader.calls.count(("put", "k", "v")) == 1  # never re-sent without a session


@aio
async def test_link_lost_session_write_is_resent_once_over_http(tmp_path: Path) -> None:
    async with pair(tmp_path, http_to_leader=True) as (leader, _, _, client):
        leader.gate = asyncio.Event()
        session = {"Raftkv-Session": "5", "Raftkv-Seq": "1"}
        pending = asyncio.ensure_future(client.put("/kv/k", data=b"v", headers=session))
        await eventually(lambda: len(leader.calls) == 1)
        assert leader.link is not None
        await leader.link.stop()
        await eventually(lambda: len(leader.calls) == 2)  # the re-send, over HTTP
        leader.gate.set()
        resp = await pending
        assert resp.status == 409  # the fake has no session 5: the leader's own answer
        assert (await resp.json())["code"] == "session_expired"
        assert len(leader.calls) == 2


@aio
async def test_no_reply_by_the_deadline_is_504_even_for_a_session(tmp_path: Path) -> None:
    settings = {"request_timeout_ms": 300, "leader_wait_ms": 100}
    async with pair(tmp_path, http_to_leader=True, **settings) as (leader, _, _, client):
        assert leader.link is not None
        leader.link._forward_handler = lambda peer, frame: None  # the leader never answers
        session = {"Raftkv-Session": "5", "Raftkv-Seq": "1"}
        resp = await client.put("/kv/k", data=b"v", headers=session)
        assert resp.status == 504
        assert (await resp.json())["code"] == "outcome_unknown"
        assert [c for c in leader.calls if c[0] != "read"] == []  # nor re-sent over HTTP


@FOLLOWERS
@aio
async def test_what_the_link_cannot_carry_goes_over_http(
    tmp_path: Path, soon_follower: bool
) -> None:
    """A frame the link refuses (here: larger than its frame limit) was never sent: HTTP."""
    async with pair(tmp_path, http_to_leader=True, soon_follower=soon_follower) as (
        leader,
        follower,
        _,
        client,
    ):
        assert follower.link is not None
        follower.link._max_frame_bytes = 4096
        resp = await client.put("/kv/big", data=b"x" * 10_000)
        assert resp.status == 200
        assert leader.data["big"] == "x" * 10_000


@FOLLOWERS
@aio
async def test_a_node_that_lost_leadership_answers_not_leader_never_forwards(
    tmp_path: Path, soon_follower: bool
) -> None:
    async with pair(tmp_path, soon_follower=soon_follower) as (leader, _, _, client):
        leader.leader_id = "node-3"  # it thinks node-3 leads now
        resp = await client.put("/kv/k", data=b"v")
        assert resp.status == 503
        body = await resp.json()
        assert body["code"] == "not_leader" and body["leader"] == "node-3"
        assert resp.headers["Retry-After"] == "1"


@aio
async def test_the_leader_checks_the_clients_credentials(tmp_path: Path) -> None:
    """The leader authenticates and authorizes the client itself: a follower whose copy of the
    users is behind (it still grants bob a role the leader revoked) does not decide."""
    async with pair(tmp_path, auth=True) as (leader, follower, leader_client, client):
        for method, path, body in (
            ("POST", "/auth/roles", {"name": "app"}),
            ("PUT", "/auth/roles/app/permissions", {"prefix": "", "permission": "readwrite"}),
            ("POST", "/auth/users", {"name": "bob", "password": "pw", "roles": ["app"]}),
        ):
            resp = await leader_client.request(method, path, json=body, headers=ROOT)
            assert resp.status in (200, 201), await resp.text()
        follower.state = copy.deepcopy(leader.state)  # the follower's replica, as of now
        resp = await leader_client.delete("/auth/users/bob/roles/app", headers=ROOT)
        assert resp.status == 200, await resp.text()
        bob = basic("bob", "pw")
        resp = await client.put("/kv/k", data=b"v", headers=bob)
        assert resp.status == 403  # the follower let it through; the leader refused it
        assert (await resp.json())["code"] == "permission_denied"
        resp = await client.put("/kv/k", data=b"v", headers={"Authorization": "Bearer x.y"})
        assert resp.status == 401
        assert "k" not in leader.data
        resp = await client.put("/kv/k", data=b"v", headers=ROOT)
        assert resp.status == 200
        assert leader.data["k"] == "v"


def test_reply_mapping_keeps_what_matters() -> None:
    resp = web.Response(
        status=503,
        body=b'{"code":"no_leader"}',
        content_type="application/json",
        headers={
            "Retry-After": "1",
            "ETag": '"4"',
            "Raftkv-Revision": "4",
            "WWW-Authenticate": "Basic",
            "X-Other": "dropped",
            "Server": "dropped",
        },
    )
    mapped = reply_of(7, resp)
    assert mapped.id == 7 and mapped.status == 503 and mapped.body == b'{"code":"no_leader"}'
    assert dict(mapped.headers) == {
        "Retry-After": "1",
        "ETag": '"4"',
        "Raftkv-Revision": "4",
        "WWW-Authenticate": "Basic",
        "Content-Type": "application/json",
    }
    assert all(type(n) is str for n, _ in mapped.headers)  # encodable (istr is not)
    raw = reply_of(1, web.Response(body=b"\x00"))
    assert dict(raw.headers)["Content-Type"] == "application/octet-stream"
    broken = reply_of(2, web.StreamResponse())
    assert broken.status == 500 and json.loads(broken.body)["code"] == "internal_error"


def test_relayed_replies_take_the_fast_form_only_when_it_is_the_same_bytes() -> None:
    """A 200 with exactly the hot routes' JSON headers becomes a JsonReply with the same bytes
    as the checked path; any other reply, or an ETag that is not a revision tag (a peer's
    bytes are untrusted: CR/LF would split the reply), takes the checked path."""
    from raftkv.server.fast_request import JsonReply, serialize
    from raftkv.server.peer_forward import relayed_response

    tagged = reply_of(3, JsonReply(b'{"k":1}', '"17"'))
    plain = reply_of(4, JsonReply(b'{"k":2}'))
    for reply in (tagged, plain):
        fast = relayed(reply)
        assert isinstance(fast, JsonReply)
        for keep_alive in (True, False):
            checked = serialize(relayed_response(reply), keep_alive)
            assert _no_date(fast.render(keep_alive)) == _no_date(checked)
    evil = ForwardedReply(
        5, 200, (("ETag", '"1"\r\nX-Evil: 1'), ("Content-Type", "application/json")), b"{}"
    )
    not_ok = ForwardedReply(6, 201, (("Content-Type", "application/json"),), b"{}")
    extra = ForwardedReply(
        7, 200, (("Content-Type", "application/json"), ("Raftkv-Revision", "4")), b"{}"
    )
    for reply in (evil, not_ok, extra):
        assert isinstance(relayed(reply), web.Response)
    with pytest.raises(ValueError):  # the checked path refuses the split header
        serialize(relayed_response(evil), True)


def _no_date(raw: bytes) -> bytes:
    return b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"Date:"))


async def _raw_put(address: str, key: str, extra: bytes = b"") -> bytes:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"PUT /kv/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n".encode()
        + extra
        + b"\r\nv"
    )
    try:
        return await reader.read(-1)
    finally:
        writer.close()


@FOLLOWERS
@aio
async def test_a_header_that_is_not_utf8_neither_hangs_nor_holds_up_the_turn(
    tmp_path: Path, soon_follower: bool
) -> None:
    # HTTP parsers accept bytes 0x80-0xFF in header values; msgpack strings cannot carry
    # them. Before: the batch failed to encode inside the flush callback and both writes of
    # that turn hung until their clients gave up. Now the odd one goes over HTTP, bytes as
    # they came, and the other over the link.
    async with pair(tmp_path, http_to_leader=True, soon_follower=soon_follower) as (
        _,
        _,
        _,
        client,
    ):
        got = await asyncio.wait_for(
            asyncio.gather(
                _raw_put(client.address, "odd", b"Accept: \xff\r\n"),
                _raw_put(client.address, "plain"),
            ),
            10,
        )
    assert all(r.startswith(b"HTTP/1.1 200 ") for r in got), got


class _FakeLink:
    """What PeerForwardClient uses of the transport; every frame is taken."""

    max_frame_bytes = 1 << 20

    def __init__(self) -> None:
        self.frames: list[ForwardBatch] = []

    def forwarding_version(self, peer: NodeId) -> int:
        return FORWARDING_VERSION

    def send_forward(self, to: NodeId, frame: ForwardBatch) -> bool:
        self.frames.append(frame)
        return True


@aio
async def test_a_batch_shares_one_deadline_timer_and_each_request_keeps_its_outcome() -> None:
    """One timer per sent frame, not per request: a request of the frame answered in time
    gets its reply, one not answered gets TimedOut at the deadline; a frame answered in full
    leaves no timer behind (fails against a batch timer that is never cancelled, or that
    expires answered requests)."""
    loop = asyncio.get_running_loop()
    scheduled: list[asyncio.TimerHandle] = []
    call_at = loop.call_at

    def counting_call_at(
        when: float, callback: Any, *args: Any, **kwargs: Any
    ) -> asyncio.TimerHandle:
        handle = call_at(when, callback, *args, **kwargs)
        if getattr(callback, "__module__", "") == "raftkv.server.peer_forward":
            scheduled.append(handle)  # the forwarding client's (not a sleep's or a timeout's)
        return handle

    link = _FakeLink()
    client = PeerForwardClient(cast("PeerTransport", link), total_timeout_s=0.05)
    loop.call_at = counting_call_at  # type: ignore[method-assign]
    try:
        async with asyncio.timeout(5):  # a lost outcome fails here, never hangs
            first = [
                asyncio.ensure_future(
                    client.forward(make_mocked_request("PUT", f"/kv/{k}"), b"v", L)
                )
                for k in ("a", "b")
            ]
            await eventually(lambda: len(link.frames) == 1)
            ids = [req.id for req in link.frames[0].requests]
            client.take_replies(L, ForwardReplies((ForwardedReply(ids[0], 200, (), b"ok"),)))
            answered = await first[0]
            assert answered.status == 200 and answered.body == b"ok"
            with pytest.raises(TimedOut):
                await first[1]
            assert len(scheduled) == 1  # one timer for the frame's two requests
            second = asyncio.ensure_future(
                client.forward(make_mocked_request("PUT", "/kv/c"), b"v", L)
            )
            await eventually(lambda: len(link.frames) == 2)
            (req,) = link.frames[1].requests
            client.take_replies(L, ForwardReplies((ForwardedReply(req.id, 204, (), b""),)))
            assert (await second).status == 204
            assert len(scheduled) == 2 and scheduled[1].cancelled()  # answered in full: cancelled
    finally:
        loop.call_at = call_at  # type: ignore[method-assign]
        client.close()
