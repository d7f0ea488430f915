"""PeerTransport over real loopback sockets: exchange, reconnect, addressing, limits."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest
import structlog

from raftkv.raft.messages import AnyMessage, AppendEntries
from raftkv.raft.types import Entry, Index, NodeId, Term
from raftkv.transport._common import TransportTuning
from tests.unit.transport.transport_helpers import (
    FAST,
    Node,
    cluster,
    eventually,
    free_port,
    hb,
    wire,
)

Run = Callable[..., Any]


def append(frm: str, to: str, n: int, size: int = 16) -> AppendEntries:
    entries = tuple(Entry(Term(1), Index(i + 1), data=b"v" * size) for i in range(n))
    return AppendEntries(Term(1), NodeId(frm), NodeId(to), Index(0), Term(0), entries, Index(0))


def test_three_nodes_exchange_messages_in_order(run: Run) -> None:
    async def scenario() -> None:
        async with cluster("a", "b", "c") as n:
            n["a"].transport.send([hb("a", "b", 1), hb("a", "c", 1), hb("a", "b", 2)])
            n["b"].transport.send([hb("b", "a", 7)])
            n["c"].transport.send([append("c", "a", 64)])
            assert [await n["b"].next(), await n["b"].next()] == [hb("a", "b", 1), hb("a", "b", 2)]
            assert await n["c"].next() == hb("a", "c", 1)
            got = {type(await n["a"].next()).__name__, type(await n["a"].next()).__name__}
            assert got == {"Heartbeat", "AppendEntries"}
            # each node sees the others' outbound connections, one per peer
            assert sorted(n["a"].transport.inbound_peers()) == ["b", "c"]
            writer = n["a"].transport._peers[NodeId("b")].writer
            assert writer is not None
            sock = writer.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0

    run(scenario())


def test_one_loop_turn_goes_out_in_one_write_per_peer(run: Run) -> None:
    async def scenario() -> None:
        async with cluster("a", "b", "c") as n:
            writes: dict[str, int] = {"b": 0, "c": 0}
            for peer_id in writes:
                writer = n["a"].transport._peers[NodeId(peer_id)].writer
                assert writer is not None
                original = writer.write

                def counting(data: Any, original: Any = original, peer_id: str = peer_id) -> None:
                    writes[peer_id] += 1
                    original(data)

                writer.write = counting  # type: ignore[method-assign]
            for i in range(50):
                n["a"].transport.send([hb("a", "b", i)])
                n["a"].transport.send([hb("a", "c", i), append("a", "b", 2)])
            received = [await n["b"].next() for _ in range(100)]
            assert [m.commit for m in received if m.__class__.__name__ == "Heartbeat"] == list(
                range(50)
            )
            assert writes == {"b": 1, "c": 1}

    run(scenario())


def test_message_to_self_is_an_error(run: Run) -> None:
    async def scenario() -> None:
        async with cluster("a", "b") as n:
            with pytest.raises(ValueError, match="to this node"):
                n["a"].transport.send([hb("a", "a")])

    run(scenario())


def test_down_peer_drops_and_reports_unreachable_rate_limited(run: Run) -> None:
    async def scenario() -> None:
        tuning = TransportTuning(backoff_initial=0.005, backoff_max=0.05, unreachable_interval=60)
        port = free_port()
        a = await Node("a", peers={NodeId("b"): ("127.0.0.1", port)}, tuning=tuning).start()
        try:
            for _ in range(20):
                a.transport.send([hb("a", "b")])  # never raises, never blocks
                await asyncio.sleep(0)
            a.transport.send([hb("a", "nobody")])
            await eventually(lambda: len(a.unreachable) >= 2)
            assert a.unreachable == ["b", "nobody"]
        finally:
            await a.stop()

    run(scenario())


def test_peer_that_starts_later_is_reached(run: Run) -> None:
    async def scenario() -> None:
        port = free_port()
        a = await Node("a", peers={NodeId("b"): ("127.0.0.1", port)}).start()
        try:
            a.transport.send([hb("a", "b")])  # dropped: b is not there yet
            await eventually(lambda: a.unreachable == ["b"])
            b = await Node("b", listen=("127.0.0.1", port)).start()
            try:
                await a.connected_to(b)
                a.transport.send([hb("a", "b", 5)])
                assert await b.next() == hb("a", "b", 5)
                assert b.inbox.empty()  # the early message was dropped, not delivered late
            finally:
                await b.stop()
        finally:
            await a.stop()

    run(scenario())


def test_peer_stop_and_restart_on_same_port(run: Run) -> None:
    async def scenario() -> None:
        async with cluster("a", "b") as n:
            a, b = n["a"], n["b"]
            port = b.addr[1]
            await b.stop()
            await eventually(lambda: a.transport.connected_peers() == [])
            a.transport.send([hb("a", "b", 1)])  # dropped while b is down
            b2 = await Node("b", listen=("127.0.0.1", port)).start()
            try:
                b2.transport.update_peer(a.id, a.addr)
                await a.connected_to(b2)
                await b2.connected_to(a)
                a.transport.send([hb("a", "b", 2)])
                b2.transport.send([hb("b", "a", 3)])
                assert await b2.next() == hb("a", "b", 2)
                assert await a.next() == hb("b", "a", 3)
            finally:
                await b2.stop()

    run(scenario())


def test_update_peer_to_new_port(run: Run) -> None:
    async def scenario() -> None:
        async with cluster("a", "b") as n:
            a, old_b = n["a"], n["b"]
            new_b = await Node("b").start()
            try:
                a.transport.update_peer(new_b.id, new_b.addr)
                await eventually(lambda: "a" in new_b.transport.inbound_peers())
                await a.connected_to(new_b)
                a.transport.send([hb("a", "b", 42)])
                assert await new_b.next() == hb("a", "b", 42)
                assert old_b.inbox.empty()
            finally:
                await new_b.stop()

    run(scenario())


def test_peer_addressed_by_host_name(run: Run) -> None:
    async def scenario() -> None:
        b = await Node("b").start()
        a = await Node("a", peers={b.id: ("localhost", b.addr[1])}).start()
        try:
            await a.connected_to(b)
            a.transport.send([hb("a", "b", 1)])
            assert await b.next() == hb("a", "b", 1)
        finally:
            await a.stop()
            await b.stop()

    run(scenario())


def test_outbound_source_address_is_bound(run: Run) -> None:
    async def scenario() -> None:
        b = await Node("b", listen=("127.0.0.1", 0)).start()
        a = await Node("a", source_host="127.0.0.2", peers={b.id: b.addr}).start()
        try:
            await eventually(lambda: "a" in b.transport.inbound_peers())
            assert b.transport.inbound_peers()[NodeId("a")][0] == "127.0.0.2"
        finally:
            await a.stop()
            await b.stop()

    run(scenario())


def test_oversized_outgoing_message_is_dropped_not_the_connection(run: Run) -> None:
    async def scenario() -> None:
        with structlog.testing.capture_logs() as logs:
            async with cluster("a", "b", max_frame_bytes=4096) as n:
                n["a"].transport.send([append("a", "b", 64, size=100), hb("a", "b", 1)])
                assert await n["b"].next() == hb("a", "b", 1)
                assert n["a"].transport.connected_peers() == ["b"]
        assert any(e["event"] == "message_too_large_dropped" for e in logs)

    run(scenario())


def test_on_message_exception_is_logged_and_delivery_goes_on(run: Run) -> None:
    async def scenario() -> None:
        async with cluster("a", "b") as n:
            b = n["b"]
            seen: list[AnyMessage] = []

            def picky(msg: AnyMessage) -> None:
                seen.append(msg)
                if len(seen) == 1:
                    raise RuntimeError("driver bug")

            b.transport._in._on_message = picky
            with structlog.testing.capture_logs() as logs:
                n["a"].transport.send([hb("a", "b", 1), hb("a", "b", 2)])
                await eventually(lambda: len(seen) == 2)
            assert any(e["event"] == "on_message_failed" for e in logs)
            assert n["a"].transport.connected_peers() == ["b"]

    run(scenario())


def test_stalled_peer_bounds_buffering(run: Run) -> None:
    """A peer that accepts but never reads: we stop queueing past the limit and report it."""

    async def scenario() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def never_read(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            accepted.append(w)

        server = await asyncio.start_server(never_read, "127.0.0.1", 0)
        limit = 1 << 20
        tuning = TransportTuning(max_buffered_bytes=limit, unreachable_interval=0)
        addr = server.sockets[0].getsockname()
        a = await Node("a", peers={NodeId("b"): addr}, tuning=tuning).start()
        try:
            await eventually(lambda: a.transport.connected_peers() == ["b"])
            big = append("a", "b", 64, size=1000)  # ~70 KB per message
            writer = a.transport._peers[NodeId("b")].writer
            assert writer is not None
            while not a.unreachable:
                a.transport.send([big] * 8)
                await asyncio.sleep(0)
                assert writer.transport.get_write_buffer_size() <= limit + 8 * 70_000
            assert a.unreachable[0] == "b"
        finally:
            await a.stop()
            for w in accepted:
                w.close()
            server.close()
            await server.wait_closed()

    run(scenario(), timeout=60)


def test_stop_is_idempotent_and_send_after_stop_is_ignored(run: Run) -> None:
    async def scenario() -> None:
        nodes = [await Node(i).start() for i in ("a", "b")]
        await wire(nodes)
        for node in nodes:
            await node.stop()
            await node.stop()
        nodes[0].transport.send([hb("a", "b")])
        assert nodes[0].unreachable == []

    run(scenario())


def test_fast_tuning_is_used() -> None:
    assert FAST.backoff_max < 0.1
