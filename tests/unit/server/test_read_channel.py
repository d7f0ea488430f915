"""The read workers' channel (`server/read_channel.py`): messages, descriptors, order, and the
rules that close a channel on a broken peer."""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket

import pytest

from raftkv.server import read_channel as ch
from tests.unit.server.fakes import aio


def test_every_message_round_trips() -> None:
    messages: list[ch.Message] = [
        ch.Init(
            "/d", 1 << 30, 5000, 75000, 30000, 1 << 20, 16384, 16384, True, "info", "json", "n1"
        ),
        ch.Conn(b"GET /kv/a HTTP/1.1\r\n\r\n"),
        ch.Back(b""),
        ch.Fence([(1, True, 0, False), (2, False, 7, True)]),
        ch.Fenced([(1, ch.FENCE_OK, 42), (2, ch.FENCE_REFUSED, 0)]),
        ch.Serving(False),
        ch.Stats([(200, 0.001), (404, 0.5)], 3),
        ch.Ready(),
        ch.Stop(),
    ]
    for msg in messages:
        assert ch.decode(ch.encode(msg)) == msg


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00junk", ch.encode(ch.Serving(True))[:-1], b"\x92\xa5fence\xa3bad"],
)
def test_an_undecodable_message_breaks_the_channel(data: bytes) -> None:
    with pytest.raises(ch.ChannelClosed):
        ch.decode(data)


class _End:
    """One end of a channel on the running loop, recording what it receives."""

    def __init__(self, sock: socket.socket) -> None:
        self.got: list[tuple[ch.Message, int]] = []
        self.closed = asyncio.Event()
        self.arrived = asyncio.Event()
        self.channel = ch.Channel(sock, self._on_message, self.closed.set)

    def _on_message(self, msg: ch.Message, fd: int) -> None:
        self.got.append((msg, fd))
        self.arrived.set()

    async def wait(self, n: int) -> None:
        async with asyncio.timeout(10):
            while len(self.got) < n:
                self.arrived.clear()
                await self.arrived.wait()


async def _still_carries(sender: _End, receiver: _End) -> None:
    """A message from `sender` arrives at `receiver`, alone: the channel still works."""
    sender.channel.send(ch.Stats([], 1))
    await receiver.wait(1)
    assert receiver.got == [(ch.Stats([], 1), -1)]


@aio
async def test_a_connection_travels_with_its_bytes_and_stays_usable() -> None:
    a, b = ch.pair()
    node, worker = _End(a), _End(b)
    client, server = socket.socketpair()
    try:
        assert node.channel.send_conn(b"GET /kv/x", server.fileno())
        server.close()  # the sender's own descriptor may close at once
        await worker.wait(1)
        msg, fd = worker.got[0]
        assert msg == ch.Conn(b"GET /kv/x") and fd >= 0
        with socket.socket(fileno=fd) as moved:
            moved.sendall(b"reply")
            assert client.recv(16) == b"reply"
        await _still_carries(worker, node)  # and back, through the queueing send
    finally:
        client.close()
        node.channel.close()
        worker.channel.close()


@aio
async def test_messages_that_do_not_fit_wait_and_keep_their_order() -> None:
    a, b = ch.pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    node = _End(a)
    worker_sock = b
    n = 300
    for i in range(n):  # far more than the socket holds: the rest is queued
        node.channel.send(ch.Fenced([(i, ch.FENCE_OK, i)] * 8))
    assert not node.channel.send_conn(b"", 0)  # never queued: the caller keeps it
    worker = _End(worker_sock)
    try:
        await worker.wait(n)
        assert [m.reads[0][0] for m, _ in worker.got] == list(range(n))  # type: ignore[union-attr]
    finally:
        node.channel.close()
        worker.channel.close()


@aio
async def test_a_connection_message_without_its_descriptor_closes_the_channel() -> None:
    a, b = ch.pair()
    a.send(ch.encode(ch.Back(b"GET")))  # no SCM_RIGHTS
    worker = _End(b)
    try:
        async with asyncio.timeout(10):
            await worker.closed.wait()
        assert worker.got == []
    finally:
        a.close()


@aio
async def test_a_descriptor_on_another_message_closes_the_channel_and_the_descriptor() -> None:
    a, b = ch.pair()
    r, w = os.pipe()
    fds = array.array("i", [r])
    a.sendmsg([ch.encode(ch.Stop())], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    os.close(r)
    worker = _End(b)
    try:
        async with asyncio.timeout(10):
            await worker.closed.wait()
        assert worker.got == []
        # The received copy was closed: the pipe has no reader left.
        with pytest.raises(BrokenPipeError):
            os.write(w, b"x")
    finally:
        os.close(w)
        a.close()


@aio
async def test_the_other_end_closing_is_seen() -> None:
    a, b = ch.pair()
    worker = _End(b)
    a.close()
    async with asyncio.timeout(10):
        await worker.closed.wait()
    assert worker.channel.closed
    worker.channel.send(ch.Ready())  # a no-op once closed


@aio
async def test_a_message_over_the_datagram_limit_drops_its_connection_not_the_channel() -> None:
    a, b = ch.pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # a small limit, whatever the box
    worker, node = _End(a), _End(b)
    client, server = socket.socketpair()
    try:
        # A connection handed back with more unanswered bytes than one datagram holds.
        worker.channel.send(ch.Back(b"G" * 65536), server.fileno())
        server.close()
        assert not worker.channel.closed  # the worker keeps serving its other connections
        client.settimeout(5)
        assert client.recv(16) == b""  # its connection was closed: no descriptor leaked open
        await _still_carries(worker, node)
    finally:
        client.close()
        worker.channel.close()
        node.channel.close()


@aio
async def test_a_queued_connection_is_closed_once_when_the_other_end_goes() -> None:
    a, b = ch.pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    node = _End(a)
    client, server = socket.socketpair()
    try:
        filler = ch.encode(ch.Fenced([(1, ch.FENCE_OK, 1)] * 8))
        with contextlib.suppress(BlockingIOError):
            while True:  # fill the socket past the channel: its next message is queued first
                a.send(filler)
        node.channel.send(ch.Conn(b"GET"), server.fileno())
        assert len(node.channel._queue) == 1
        server.close()
        b.close()  # the worker is gone: the queued send fails, the channel closes
        async with asyncio.timeout(10):
            await node.closed.wait()
        # The queued connection's descriptor (the last one) was closed: the client sees EOF.
        assert client.recv(16) == b""
    finally:
        client.close()
