"""No reply leaves a read worker once its node refuses reads (server/read_gate.py), even a read
that was already in flight in the worker when the node failed.

A worker's parts run in this process (`read_worker.Worker` on one end of a real channel, over a
real LMDB state); the test plays the node on the other end: it answers fences, shuts the gate
and sends `Serving(False)` as `ReadWorkers._reads_refused` does, and receives what the worker
hands back. The client is the other end of a socket pair handed to the worker.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from raftkv.server import read_channel as ch
from raftkv.server import read_worker
from raftkv.server.read_gate import ReadGate
from raftkv.server.read_worker import Worker
from raftkv.storage.state_lmdb import DEFAULT_MAP_SIZE, LmdbState
from tests.unit.server.fakes import aio
from tests.unit.storage.test_state_machines import CONF, put

DEADLINE_S = 10.0
STALE_GET = b"GET /kv/k?consistency=stale HTTP/1.1\r\nHost: n1\r\n\r\n"
LINEARIZABLE_GET = b"GET /kv/k HTTP/1.1\r\nHost: n1\r\n\r\n"


def _state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    state = LmdbState.open(path)
    state.apply([put(1, "k", "secret")], conf=CONF)
    state.close()
    return path


class _Node:
    """The node's end of the worker's channel: records what the worker sends."""

    def __init__(self, sock: socket.socket) -> None:
        self.got: list[tuple[ch.Message, int]] = []
        self._arrived = asyncio.Event()
        self.channel = ch.Channel(sock, self._on_message, lambda: None)

    def _on_message(self, msg: ch.Message, fd: int) -> None:
        self.got.append((msg, fd))
        self._arrived.set()

    async def first(self, kind: type[ch.Message]) -> tuple[ch.Message, int]:
        async with asyncio.timeout(DEADLINE_S):
            while True:
                for msg, fd in self.got:
                    if isinstance(msg, kind):
                        return msg, fd
                self._arrived.clear()
                await self._arrived.wait()


@dataclass
class _Setup:
    node: _Node
    gate: ReadGate
    client: socket.socket


@asynccontextmanager
async def _worker(tmp_path: Path, request: bytes) -> AsyncIterator[_Setup]:
    """A ready worker serving `request` on a connection handed to it (a stale read while the
    node says it serves)."""
    node_sock, worker_sock = ch.pair()
    gate = ReadGate.create()
    worker = Worker(worker_sock, ReadGate.attach(os.dup(gate.fd)))
    node = _Node(node_sock)
    client, ours = socket.socketpair()
    try:
        node.channel.send(
            ch.Init(
                str(_state(tmp_path)),
                DEFAULT_MAP_SIZE,
                5000,
                75000,
                30000,
                1 << 20,
                16384,
                16384,
                False,
                "info",
                "json",
                "n1",
            )
        )
        node.channel.send(ch.Serving(True))
        await node.first(ch.Ready)
        node.channel.send(ch.Conn(request), ours.fileno())
        ours.close()
        yield _Setup(node, gate, client)
    finally:
        worker.stop()
        async with asyncio.timeout(DEADLINE_S):
            await worker.run()
        node.channel.close()
        client.close()
        gate.close()


def _nothing_received(client: socket.socket) -> bool:
    """No byte came, and the connection is still open (the node holds it now)."""
    client.setblocking(False)
    try:
        client.recv(1 << 16)  # a reply, or b"" at its end
    except BlockingIOError:
        return True
    return False


@pytest.fixture(autouse=True)
def _quiet_worker_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker configures its process's logging; here that process is pytest's.
    monkeypatch.setattr(read_worker, "configure_logging", lambda *_: None)


@aio
async def test_a_fenced_read_answered_just_before_the_failure_is_not_replied_after_it(
    tmp_path: Path,
) -> None:
    async with _worker(tmp_path, LINEARIZABLE_GET) as s:
        fence, _ = await s.node.first(ch.Fence)
        assert isinstance(fence, ch.Fence)
        [(rid, linearizable, _, _)] = fence.reads
        assert linearizable
        # The node confirms the read (its state is applied that far), then fails before the
        # worker replies: the gate shuts and Serving(False) follows, on the failure path.
        s.node.channel.send(ch.Fenced([(rid, ch.FENCE_OK, 1)]))
        s.gate.shut()
        s.node.channel.send(ch.Serving(False))
        back, fd = await s.node.first(ch.Back)
        # The request comes back to the node unanswered; the client got no value.
        assert isinstance(back, ch.Back) and back.data == LINEARIZABLE_GET
        assert fd >= 0
        assert _nothing_received(s.client)
        os.close(fd)


@aio
async def test_a_stale_read_taken_before_the_worker_read_serving_off_is_handed_back(
    tmp_path: Path,
) -> None:
    # The node refused reads (gate shut) while its Serving(False) still waits in the channel
    # behind the worker's loop turn: the worker's own flag still says it serves.
    async with _worker(tmp_path, b"") as s:
        s.gate.shut()
        s.client.sendall(STALE_GET)
        back, fd = await s.node.first(ch.Back)
        assert isinstance(back, ch.Back) and back.data == STALE_GET
        assert _nothing_received(s.client)
        os.close(fd)


@aio
async def test_an_open_gate_serves_the_read(tmp_path: Path) -> None:
    """The same worker answers while the node serves (the tests above would pass on a worker
    that answers nothing)."""
    async with _worker(tmp_path, b"") as s:
        s.client.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(s.client, STALE_GET)
        async with asyncio.timeout(DEADLINE_S):
            reply = await loop.sock_recv(s.client, 1 << 16)
        assert reply.startswith(b"HTTP/1.1 200 OK") and b"secret" in reply
        assert not [m for m, _ in s.node.got if isinstance(m, ch.Back)]
