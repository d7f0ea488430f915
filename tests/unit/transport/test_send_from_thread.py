"""`PeerTransport.send_from_thread`: the driver's WAL thread writes its acks itself (issue 12).

- An ack written from another thread arrives whole, and frames written by the loop at the
  same time never interleave with it (every message arrives, the connection is not dropped).
- A partial write leaves its tail to the loop, which writes it before its own next frame.
- Not connected, or something queued by the loop for that peer: nothing is written, and the
  messages come back for the loop to send.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from raftkv.raft.messages import AnyMessage, AppendEntriesResponse, Heartbeat
from raftkv.raft.types import Index, NodeId, Term
from raftkv.transport import _outbound
from tests.unit.transport.transport_helpers import cluster, hb

Run = Callable[..., Any]


def ack(index: int) -> AppendEntriesResponse:
    return AppendEntriesResponse(Term(1), NodeId("b"), NodeId("a"), Index(index))


async def in_thread(fn: Callable[[], list[AnyMessage]]) -> list[AnyMessage]:
    return await asyncio.to_thread(fn)


def test_acks_from_a_thread_and_loop_frames_arrive_whole(run: Run) -> None:
    async def scenario() -> None:
        async with cluster("a", "b") as n:
            b = n["b"].transport
            n_acks, n_beats = 300, 300
            stop = threading.Event()
            left: list[AnyMessage] = []

            def writer_thread() -> None:
                for i in range(1, n_acks + 1):
                    left.extend(b.send_from_thread([ack(i)]))
                stop.set()

            thread = threading.Thread(target=writer_thread)
            thread.start()
            beats = 0
            while not stop.is_set() or beats < n_beats:
                b.send([hb("b", "a", commit=beats)], now=True)
                beats += 1
                await asyncio.sleep(0)
            thread.join()
            b.send(left, now=True)  # what the thread handed back goes the loop's way
            acks: set[int] = set()
            seen_beats = 0
            async with asyncio.timeout(10):
                while len(acks) < n_acks or seen_beats < beats:
                    msg = await n["a"].next()
                    if isinstance(msg, AppendEntriesResponse):
                        acks.add(msg.index)
                    elif isinstance(msg, Heartbeat):
                        seen_beats += 1
            assert acks == set(range(1, n_acks + 1))
            assert len(left) < n_acks  # the thread really wrote most of them itself
            assert "b" in n["a"].transport.inbound_peers()  # never dropped for a bad frame

    run(scenario())


def test_a_partial_write_is_finished_by_the_loop_before_its_next_frame(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with cluster("a", "b") as n:
            b = n["b"].transport
            real_write = _outbound.os.write
            monkeypatch.setattr(_outbound.os, "write", lambda fd, data: real_write(fd, data[:3]))
            # Called on the loop thread here, so the loop writes its next frame before the
            # callback that would push the tail has run: that write must push it first.
            assert b.send_from_thread([ack(7)]) == []
            monkeypatch.setattr(_outbound.os, "write", real_write)
            b.send([hb("b", "a", commit=9)], now=True)
            first, second = await n["a"].next(), await n["a"].next()
            assert isinstance(first, AppendEntriesResponse) and first.index == 7
            assert isinstance(second, Heartbeat) and second.commit == 9

    run(scenario())


def test_nothing_is_written_when_the_loop_must_send(run: Run) -> None:
    async def scenario() -> None:
        async with cluster("a", "b") as n:
            b = n["b"].transport
            stray = AppendEntriesResponse(Term(1), NodeId("b"), NodeId("zed"), Index(1))
            assert await in_thread(lambda: b.send_from_thread([stray])) == [stray]
            b.send([hb("b", "a")])  # queued for the end of this loop turn
            assert b.send_from_thread([ack(1)]) == [ack(1)]  # would overtake the queued one
            assert isinstance(await n["a"].next(), Heartbeat)

    run(scenario())
