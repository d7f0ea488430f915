"""Test helpers for the server: a fake in-memory KVNode, settings, servers on real ports.

Rules: no fixed sleeps; every server and session is closed by the helper that opened it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import aiohttp
from aiohttp import web
from yarl import URL

from raftkv.kv.commands import Command, Delete, Put, Result
from raftkv.kv.machine import apply_command
from raftkv.kv.mvcc import DictState, MVCCStore
from raftkv.runtime.api import (
    ROLE_FOLLOWER,
    ROLE_LEADER,
    LocalStatus,
    MustWait,
    NotLeaderError,
    RetryWrite,
)
from raftkv.runtime.waiters import ProposalLost
from raftkv.server.config import Address, Settings, load_settings
from raftkv.server.http import create_app
from raftkv.server.runner import run_http

P = ParamSpec("P")
T = TypeVar("T")

CONFIG_3 = """\
cluster:
  name: "test-cluster"
  bootstrap_id: "node-1"
  data_dir: "{data_dir}"
  nodes:
    node-1: "127.0.0.1:9001"
    node-2: "127.0.0.1:9002"
    node-3: "127.0.0.1:9003"
raft:
  election_timeout_ms: 100
  heartbeat_timeout_ms: 25
logging:
  level: "info"
"""


def aio(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test on a fresh event loop (no pytest asyncio plugin needed)."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(fn(*args, **kwargs))

    return run


def make_settings(tmp_path: Path, node_id: str = "node-1", **changes: Any) -> Settings:
    path = tmp_path / "cluster.yaml"
    path.write_text(CONFIG_3.format(data_dir=tmp_path / "data"), encoding="utf-8")
    settings = load_settings({"config": path, "node_id": node_id}, env={})
    return dataclasses.replace(settings, **changes)


class FakeNode:
    """An in-memory KVNode. Leader when `leader_id == node_id`, else raises NotLeaderError."""

    def __init__(
        self,
        node_id: str = "node-1",
        *,
        leader_id: str | None = "node-1",
        http_peers: Mapping[str, str] | None = None,
        term: int = 1,
        hint_leader_http: bool = True,
    ) -> None:
        self._id = node_id
        self.leader_id = leader_id
        self.term = term
        self.http_peers = dict(
            http_peers
            or {"node-1": "127.0.0.1:1", "node-2": "127.0.0.1:2", "node-3": "127.0.0.1:3"}
        )
        self.raft_peers = {
            n: f"127.0.0.1:{9000 + i}" for i, n in enumerate(sorted(self.http_peers), 1)
        }
        self.hint_leader_http = hint_leader_http
        self.state = DictState()
        self.index = 0  # the fake's "log index": every write takes the next one
        self.calls: list[tuple[object, ...]] = []
        self.versions = (1, 1)  # (format, command set) it reports in its local status
        self.fail_with: BaseException | None = None  # raised by every operation while set
        self.hang = False  # operations never complete while set
        self.ready = True

    @property
    def node_id(self) -> str:
        return self._id

    async def _enter(self, *call: object, write: bool) -> None:
        self.calls.append(call)
        if self.hang:
            await asyncio.Event().wait()
        if self.fail_with is not None:
            raise self.fail_with
        if write and self.leader_id != self._id:
            hint = self.http_peers.get(self.leader_id) if self.leader_id else None
            raise NotLeaderError(self.leader_id, hint if self.hint_leader_http else None)

    @property
    def data(self) -> dict[str, str | bytes]:
        """The current values (read-only view: change state through `seed` or `write`)."""
        return {k: kv.value for k, kv in self.state.items()}

    def seed(self, key: str, value: str) -> None:
        self.index += 1
        apply_command(self.state, Put(key, value), self.index)

    async def write(self, cmd: Command) -> Result:
        match cmd:
            case Put(key=key, value=value):
                call: tuple[object, ...] = ("put", key, value)
            case Delete(key=key):
                call = ("delete", key)
            case _:
                call = (type(cmd).__name__.lower(),)
        await self._enter(*call, write=True)
        self.index += 1
        return apply_command(self.state, cmd, self.index)

    async def read(
        self,
        fn: Callable[[MVCCStore], T],
        *,
        linearizable: bool,
        min_revision: int = 0,
        lease: bool = False,
    ) -> T:
        await self._enter("read", "lease" if lease else linearizable, write=False)
        return fn(self.state)

    def local_status(self) -> LocalStatus:
        return LocalStatus(
            node_id=self._id,
            role=ROLE_LEADER if self.leader_id == self._id else ROLE_FOLLOWER,
            term=self.term,
            leader_id=self.leader_id,
            commit_index=7,
            applied_index=6,
            last_index=8,
            raft_address=self.raft_peers[self._id],
            http_address=self.http_peers[self._id],
            format_version=self.versions[0],
            command_set=self.versions[1],
        )

    def is_ready(self) -> bool:
        return self.ready

    def peer_http_addresses(self) -> Mapping[str, str]:
        return self.http_peers

    def peer_raft_addresses(self) -> Mapping[str, str]:
        return self.raft_peers


class SoonFakeNode(FakeNode):
    """A FakeNode with the calls without a coroutine (`runtime.api.SoonNode`), as RaftKVNode
    has them: the fast engine serves stale GETs at once and linearizable GETs, PUTs and
    DELETEs from a callback of the future; the future completes one loop turn later, with
    `fail_with` as its exception when set. `hang` and a follower make them MustWait (the
    coroutine calls then hang or raise as FakeNode's). `soon_calls` counts them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.soon_calls = 0
        self.delay_s = 0.0  # when > 0: futures complete after this long instead
        self.fail_once = False  # fail_with fails the next future only (then cleared)
        self.hold = False  # futures wait for `release()` while set
        self._held: list[Callable[[], None]] = []

    def _complete(self, fut: asyncio.Future[Any], make: Callable[[], object]) -> None:
        def done() -> None:
            if fut.done():
                return
            if self.fail_with is not None:
                fut.set_exception(self.fail_with)
                if self.fail_once:
                    self.fail_with, self.fail_once = None, False
            else:
                fut.set_result(make())

        loop = asyncio.get_running_loop()
        if self.hold:
            self._held.append(done)
        elif self.delay_s > 0:
            loop.call_later(self.delay_s, done)
        else:
            loop.call_soon(done)

    def release(self) -> None:
        """Complete the futures held so far (next loop turn)."""
        held, self._held = self._held, []
        for done in held:
            asyncio.get_running_loop().call_soon(done)

    def write_soon(self, cmd: Command) -> asyncio.Future[object]:
        if self.hang or self.leader_id != self._id:
            raise MustWait
        match cmd:
            case Put(key=key, value=value):
                self.calls.append(("put", key, value))
            case Delete(key=key):
                self.calls.append(("delete", key))
            case _:
                self.calls.append((type(cmd).__name__.lower(),))
        self.soon_calls += 1
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()

        def apply() -> object:
            self.index += 1
            return apply_command(self.state, cmd, self.index)

        self._complete(fut, apply)
        return fut

    def write_settled(self, fut: asyncio.Future[object]) -> Result:
        try:
            return fut.result()  # type: ignore[return-value]  # what apply_command returned
        except ProposalLost:
            raise RetryWrite from None

    def read_soon(
        self, *, linearizable: bool, min_revision: int = 0, lease: bool = False
    ) -> asyncio.Future[None] | None:
        if self.hang:
            raise MustWait
        self.calls.append(("read", "lease" if lease else linearizable))
        self.soon_calls += 1
        if not linearizable:
            if self.fail_with is not None:
                raise self.fail_with
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._complete(fut, lambda: None)
        return fut

    def read_settled(self, fut: asyncio.Future[None]) -> None:
        fut.result()

    def read_applied(self, fn: Callable[[MVCCStore], T]) -> T:
        return fn(self.state)


class Client:
    """A client session bound to one served app; closes every response it returned."""

    def __init__(self, session: aiohttp.ClientSession, host: str, port: int) -> None:
        self.session = session
        self.host = host
        self.port = port
        self.app: web.Application | None = None  # the app served (client_for)
        self._responses: list[aiohttp.ClientResponse] = []

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, path: str | URL) -> URL:
        if isinstance(path, URL):  # already encoded: sent exactly as written
            return URL(f"http://{self.address}{path.raw_path_qs}", encoded=True)
        return URL(f"http://{self.address}{path}")

    async def request(self, method: str, path: str | URL, **kwargs: Any) -> aiohttp.ClientResponse:
        if isinstance(kwargs.get("data"), bytes):
            # aiohttp labels a bytes body application/octet-stream, which the server stores
            # as a binary value; these tests send raw text unless they say otherwise.
            headers = dict(kwargs.get("headers") or {})
            headers.setdefault("Content-Type", "text/plain")
            kwargs["headers"] = headers
        resp = await self.session.request(method, self.url(path), **kwargs)
        self._responses.append(resp)
        return resp

    async def get(self, path: str | URL, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("GET", path, **kwargs)

    async def put(self, path: str | URL, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("PUT", path, **kwargs)

    async def post(self, path: str | URL, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("POST", path, **kwargs)

    async def delete(self, path: str | URL, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("DELETE", path, **kwargs)

    def close_responses(self) -> None:
        for resp in self._responses:
            resp.close()


@asynccontextmanager
async def client_for(node: FakeNode, settings: Settings) -> AsyncIterator[Client]:
    """The node's app served as in production (`run_http`) on a free port of 127.0.0.1."""
    settings = dataclasses.replace(settings, http_listen=Address("127.0.0.1", 0))
    runner = await run_http(create_app(node, settings), settings)
    try:
        host, port = runner.addresses[0][:2]
        async with aiohttp.ClientSession() as session:
            client = Client(session, host, port)
            client.app = runner.app
            try:
                yield client
            finally:
                client.close_responses()
    finally:
        await runner.cleanup()


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """The body that follows a request `head`, by its Content-Length (0 without one)."""
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return await reader.readexactly(length)


class DroppingServer:
    """A raw TCP "leader" that reads one whole request, counts it, and closes without replying."""

    def __init__(self) -> None:
        self.requests = 0
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_body(reader, await reader.readuntil(b"\r\n\r\n"))
            self.requests += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            await writer.wait_closed()

    async def __aenter__(self) -> DroppingServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
