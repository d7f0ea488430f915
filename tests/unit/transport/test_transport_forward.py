"""Forward frames on real peer links: gated on the Hello, delivered in order, link ends told."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from raftkv.codec.forward import (
    FORWARDING_VERSION,
    ForwardBatch,
    ForwardedReply,
    ForwardedRequest,
    ForwardReplies,
)
from raftkv.codec.wire import encode_frame, encode_frames
from raftkv.raft.types import NodeId
from tests.unit.transport.transport_helpers import Node, eventually, hb, wire

Run = Callable[..., Any]
A, B = NodeId("a"), NodeId("b")


def batch(*ids: int) -> ForwardBatch:
    return ForwardBatch(tuple(ForwardedRequest(i, "PUT", f"/kv/k{i}", (), b"v") for i in ids))


def replies(*ids: int) -> ForwardReplies:
    return ForwardReplies(tuple(ForwardedReply(i, 200, (), b"{}") for i in ids))


class Recorder:
    def __init__(self, node: Node) -> None:
        self.frames: list[tuple[NodeId, ForwardBatch | ForwardReplies]] = []
        self.down: list[NodeId] = []
        node.transport.set_forward_handlers(
            lambda peer, frame: self.frames.append((peer, frame)), self.down.append
        )


@contextlib.asynccontextmanager
async def _pair(a_fwd: int, b_fwd: int) -> AsyncIterator[tuple[Node, Node]]:
    a = await Node("a", forwarding=a_fwd).start()
    b = await Node("b", forwarding=b_fwd).start()
    try:
        await wire([a, b])
        yield a, b
    finally:
        await a.stop()
        await b.stop()


def test_batch_and_replies_travel_between_nodes_that_announced(run: Run) -> None:
    async def scenario() -> None:
        async with _pair(FORWARDING_VERSION, FORWARDING_VERSION) as (a, b):
            at_a, at_b = Recorder(a), Recorder(b)
            await eventually(lambda: a.transport.forwarding_version(B) == FORWARDING_VERSION)
            a.transport.send([hb("a", "b", 1)])  # queued this turn: goes out first
            assert a.transport.send_forward(B, batch(1, 2))
            assert a.transport.send_forward(B, batch(3))
            assert await b.next() == hb("a", "b", 1)
            await eventually(lambda: len(at_b.frames) == 2)
            assert at_b.frames == [(A, batch(1, 2)), (A, batch(3))]
            assert b.transport.send_forward(A, replies(2, 1))
            await eventually(lambda: at_a.frames == [(B, replies(2, 1))])

    run(scenario())


def test_no_batch_to_a_peer_that_did_not_announce(run: Run) -> None:
    async def scenario() -> None:
        async with _pair(FORWARDING_VERSION, 0) as (a, b):  # b plays an older node
            Recorder(b)
            await eventually(lambda: A in b.transport.inbound_peers())
            await eventually(lambda: B in a.transport.inbound_peers())
            assert a.transport.forwarding_version(B) == 0
            assert not a.transport.send_forward(B, batch(1))

    run(scenario())


def test_a_batch_to_a_node_that_did_not_announce_drops_the_link(run: Run) -> None:
    async def scenario() -> None:
        async with _pair(FORWARDING_VERSION, 0) as (a, b):
            at_a, at_b = Recorder(a), Recorder(b)
            peer = a.transport._peers[B]
            assert peer.flush(raw=encode_frame(batch(1)))  # past the gate, as a rogue peer
            await eventually(lambda: A in at_b.down)  # b dropped a's connection
            await eventually(lambda: B in at_a.down)  # and a saw its link end
            assert at_b.frames == []

    run(scenario())


def test_link_ends_are_told_and_the_gate_closes_with_the_link(run: Run) -> None:
    async def scenario() -> None:
        async with _pair(FORWARDING_VERSION, FORWARDING_VERSION) as (a, b):
            at_a = Recorder(a)
            await eventually(lambda: a.transport.forwarding_version(B) == FORWARDING_VERSION)
            await b.stop()  # (stopping again on the way out does nothing)
            await eventually(lambda: at_a.down.count(B) >= 2)  # our link out, and b's link in
            assert a.transport.forwarding_version(B) == 0
            assert not a.transport.send_forward(B, batch(1))

    run(scenario())


def test_a_frame_before_any_handler_keeps_the_link(run: Run) -> None:
    async def scenario() -> None:
        async with _pair(FORWARDING_VERSION, FORWARDING_VERSION) as (a, b):
            await eventually(lambda: a.transport.forwarding_version(B) == FORWARDING_VERSION)
            assert a.transport.send_forward(B, batch(1))
            a.transport.send([hb("a", "b", 5)])
            assert await b.next() == hb("a", "b", 5)  # the link survived the dropped frame
            assert A in b.transport.inbound_peers()

    run(scenario())


def test_batches_before_the_handler_wait_for_it_and_none_after_it_is_removed(run: Run) -> None:
    async def scenario() -> None:
        async with _pair(FORWARDING_VERSION, FORWARDING_VERSION) as (a, b):
            await eventually(lambda: a.transport.forwarding_version(B) == FORWARDING_VERSION)
            assert a.transport.send_forward(B, batch(1))  # b's server has not started yet
            a.transport.send([hb("a", "b", 1)])
            assert await b.next() == hb("a", "b", 1)  # so the batch has arrived
            at_b = Recorder(b)
            await eventually(lambda: at_b.frames == [(A, batch(1))])
            b.transport.set_forward_handlers(None, None)  # b's server stops
            assert a.transport.send_forward(B, batch(2))
            a.transport.send([hb("a", "b", 2)])
            assert await b.next() == hb("a", "b", 2)
            late = Recorder(b)  # batch 2 was dropped while no handler was set, not kept
            a.transport.send([hb("a", "b", 3)])
            assert await b.next() == hb("a", "b", 3)
            await asyncio.sleep(0)  # a replay would be a call_soon away: let it run
            assert late.frames == [] and at_b.frames == [(A, batch(1))]

    run(scenario())


def test_queued_frames_leave_in_one_write_behind_the_turns_raft_messages(run: Run) -> None:
    """queue_forward and before_flush (issue 12): a turn's Raft messages, the frames queued
    during it and those a hook queues at the flush go out in ONE write, in that order."""

    async def scenario() -> None:
        async with _pair(FORWARDING_VERSION, FORWARDING_VERSION) as (a, b):
            at_b = Recorder(b)
            await eventually(lambda: a.transport.forwarding_version(B) == FORWARDING_VERSION)
            peer = a.transport._peers[B]
            writes: list[bytes] = []
            write = peer._write

            def spy(writer: asyncio.StreamWriter, data: bytes | bytearray) -> None:
                writes.append(bytes(data))
                write(writer, data)

            peer._write = spy  # type: ignore[method-assign]
            a.transport.before_flush(lambda: a.transport.queue_forward(B, replies(2)))
            a.transport.send([hb("a", "b", 1)])
            assert a.transport.queue_forward(B, replies(1))
            assert writes == []  # nothing leaves before the end of the turn
            assert await b.next() == hb("a", "b", 1)
            await eventually(lambda: len(at_b.frames) == 2)
            assert at_b.frames == [(A, replies(1)), (A, replies(2))]
            assert writes == [encode_frames([hb("a", "b", 1), replies(1), replies(2)])]

    run(scenario())


def test_an_unencodable_queued_frame_is_refused_and_the_turn_still_goes_out(run: Run) -> None:
    async def scenario() -> None:
        async with _pair(FORWARDING_VERSION, FORWARDING_VERSION) as (a, b):
            at_b = Recorder(b)
            await eventually(lambda: a.transport.forwarding_version(B) == FORWARDING_VERSION)
            bad = ForwardReplies((ForwardedReply(1, 200, (("X", "\udc80"),), b""),))

            def failing_hook() -> None:
                raise RuntimeError("planted")

            a.transport.before_flush(failing_hook)
            a.transport.send([hb("a", "b", 1)])
            assert not a.transport.queue_forward(B, bad)
            assert a.transport.queue_forward(B, replies(3))
            assert await b.next() == hb("a", "b", 1)
            await eventually(lambda: at_b.frames == [(A, replies(3))])

    run(scenario())
