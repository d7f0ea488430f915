"""Issue 10's attacks on the peer port, each refused before anything reaches the core.

Every test here failed on main before peer validation landed: a Hello from a made-up id was
admitted and its AppendEntries delivered, a Hello for a live member's id displaced that
member's connection, Heartbeat(term=2**64-1) was delivered, snapshot sizes were unbounded and
inbound connections uncapped.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from raftkv.codec.commands import COMMAND_VERSION
from raftkv.codec.wire import PROTOCOL_VERSION, WIRE_VERSION, Hello, SnapshotChunk, encode_frames
from raftkv.raft.messages import AppendEntries, Heartbeat
from raftkv.raft.types import Entry, Index, NodeId, Term
from raftkv.transport._common import TransportTuning
from tests.unit.transport.transport_helpers import FAST, Node, cluster, eventually, hb

Run = Callable[..., Any]


def hello(node: str) -> Hello:
    return Hello(PROTOCOL_VERSION, "test", NodeId(node))


def forged_append(frm: str, to: str, data: bytes) -> AppendEntries:
    return AppendEntries(
        Term(1),
        NodeId(frm),
        NodeId(to),
        Index(0),
        Term(0),
        (Entry(Term(1), Index(1), data=data),),
        Index(1),
    )


async def dropped(reader: asyncio.StreamReader) -> bool:
    """True once the acceptor closed the connection (EOF or reset) within a deadline."""
    async with asyncio.timeout(5):
        try:
            while await reader.read(4096):
                pass
        except ConnectionResetError:
            pass
    return True


async def send_raw(node: Node, payload: bytes) -> list[dict[str, Any]]:
    """Open a raw connection to `node`, send `payload`, wait until dropped; return the logs."""
    with structlog.testing.capture_logs() as logs:
        reader, writer = await asyncio.open_connection(*node.addr)
        try:
            writer.write(payload)
            assert await dropped(reader)
        finally:
            writer.close()
            await writer.wait_closed()
    return logs


def members(*ids: str) -> Callable[[NodeId], bool]:
    live = set(ids)
    return lambda peer: peer in live


def test_forged_append_from_a_non_member_never_reaches_the_core(run: Run) -> None:
    async def scenario() -> None:
        async with cluster("a", "b", is_member=members("a", "b")) as n:
            a = n["a"]
            bad_version = bytes([COMMAND_VERSION + 7]) + b"\x93\x01\xa1k\xa1v"
            logs = await send_raw(
                a, encode_frames([hello("mallory"), forged_append("mallory", "a", bad_version)])
            )
            assert a.inbox.empty()
            assert "mallory" not in a.transport.inbound_peers()
            refused = [e for e in logs if e["event"] == "inbound_refused"]
            assert refused and "not a member of the live configuration" in refused[0]["reason"]
            n["b"].transport.send([hb("b", "a", 4)])
            assert await a.next() == hb("b", "a", 4)

    run(scenario())


def test_live_configuration_decides_not_the_address_book(run: Run) -> None:
    """A member added later is admitted; a removed one is refused and its link is closed."""

    async def scenario() -> None:
        live = {"a", "b"}
        async with cluster("a", "b", is_member=lambda p: p in live) as n:
            a = n["a"]
            reader, writer = await asyncio.open_connection(*a.addr)
            logs = await send_raw(a, encode_frames([hello("c"), hb("c", "a", 1)]))
            assert any(e["event"] == "inbound_refused" for e in logs)
            live.add("c")  # conf change adds c
            writer.write(encode_frames([hello("c"), hb("c", "a", 2)]))
            assert await a.next() == hb("c", "a", 2)
            live.discard("c")  # conf change removes c; the driver then calls:
            a.transport.drop_non_members()
            assert await dropped(reader)
            writer.close()
            await writer.wait_closed()
            await eventually(lambda: "c" not in a.transport.inbound_peers())

    run(scenario())


def test_remove_peer_closes_its_inbound_connection(run: Run) -> None:
    async def scenario() -> None:
        async with cluster("a", "b", is_member=members("a", "b", "c")) as n:
            a = n["a"]
            reader, writer = await asyncio.open_connection(*a.addr)
            writer.write(encode_frames([hello("c"), hb("c", "a", 1)]))
            assert await a.next() == hb("c", "a", 1)
            a.transport.remove_peer(NodeId("c"))
            assert await dropped(reader)
            writer.close()
            await writer.wait_closed()

    run(scenario())


def test_default_admission_is_the_known_peers(run: Run) -> None:
    async def scenario() -> None:
        a = await Node("a", is_member=None).start()
        try:
            logs = await send_raw(a, encode_frames([hello("x"), hb("x", "a", 1)]))
            assert any(e["event"] == "inbound_refused" for e in logs)
            assert a.inbox.empty()
        finally:
            await a.stop()

    run(scenario())


def test_hello_never_displaces_a_live_connection(run: Run) -> None:
    async def scenario() -> None:
        async with cluster("a", "b", is_member=members("a", "b")) as n:
            a, b = n["a"], n["b"]
            await eventually(lambda: "b" in a.transport.inbound_peers())
            before = a.transport.inbound_peers()["b"]
            logs = await send_raw(a, encode_frames([hello("b"), hb("b", "a", 99)]))
            refused = [e for e in logs if e["event"] == "inbound_refused"]
            assert refused and "already has a live connection" in refused[0]["reason"]
            assert a.transport.inbound_peers()["b"] == before
            b.transport.send([hb("b", "a", 5)])
            assert await a.next() == hb("b", "a", 5)  # the impostor's 99 never arrived

    run(scenario())


def test_half_open_connection_is_dropped_then_the_peer_is_admitted_again(run: Run) -> None:
    async def scenario() -> None:
        tuning = TransportTuning(
            backoff_initial=0.005, backoff_max=0.05, keepalive_interval=0.02, idle_timeout=0.3
        )
        async with cluster("a", "b", is_member=members("a", "b", "c"), tuning=tuning) as n:
            a = n["a"]
            # "c" connects, then its host vanishes: the socket stays open but says nothing.
            reader, writer = await asyncio.open_connection(*a.addr)
            writer.write(encode_frames([hello("c"), hb("c", "a", 1)]))
            assert await a.next() == hb("c", "a", 1)
            with structlog.testing.capture_logs() as logs:
                assert await dropped(reader)
            assert any(e["event"] == "inbound_dropped_idle" for e in logs)
            writer.close()
            await writer.wait_closed()
            # the restarted c is admitted now
            _r2, w2 = await asyncio.open_connection(*a.addr)
            w2.write(encode_frames([hello("c"), hb("c", "a", 2)]))
            assert await a.next() == hb("c", "a", 2)
            w2.close()
            await w2.wait_closed()
            # b's link, idle all along, was kept alive by Pings and never dropped
            assert not any(
                e["event"] == "inbound_dropped_idle" and e.get("peer") == "b" for e in logs
            )
            n["b"].transport.send([hb("b", "a", 3)])
            assert await a.next() == hb("b", "a", 3)

    run(scenario())


def test_heartbeat_with_a_term_beyond_2_pow_63_is_refused(run: Run) -> None:
    async def scenario() -> None:
        async with cluster("a", "b", is_member=members("a", "b", "c")) as n:
            a = n["a"]
            huge = Heartbeat(Term(2**64 - 1), NodeId("c"), NodeId("a"), Index(0))
            logs = await send_raw(a, encode_frames([hello("c"), huge]))
            assert any(
                e["event"] == "inbound_dropped_bad_frame" and "out of range" in e["error"]
                for e in logs
            )
            assert a.inbox.empty()

    run(scenario())


def test_snapshot_size_is_capped_and_must_fit_on_disk(run: Run, tmp_path: Path) -> None:
    async def scenario() -> None:
        capped = TransportTuning(hello_timeout=1.0, max_snapshot_bytes=1000)
        a = await Node(
            "a", is_member=members("c"), snapshot_dir=tmp_path / "a", tuning=capped
        ).start()
        try:
            chunk = SnapshotChunk(Index(5), Term(1), 0, 1001, b"x")
            logs = await send_raw(a, encode_frames([hello("c"), chunk]))
            assert any("exceeds raft.max_snapshot_bytes" in e.get("error", "") for e in logs)
        finally:
            await a.stop()
        no_room = TransportTuning(hello_timeout=1.0, snapshot_free_reserve_bytes=1 << 62)
        b = await Node(
            "b", is_member=members("c"), snapshot_dir=tmp_path / "b", tuning=no_room
        ).start()
        try:
            chunk = SnapshotChunk(Index(5), Term(1), 0, 10, b"x")
            logs = await send_raw(b, encode_frames([hello("c"), chunk]))
            assert any("does not fit" in e.get("error", "") for e in logs)
            assert not list((tmp_path / "b").iterdir())  # nothing was written
        finally:
            await b.stop()

    run(scenario())


def test_connections_in_their_handshake_are_capped(run: Run) -> None:
    async def scenario() -> None:
        tuning = TransportTuning(hello_timeout=5.0, max_handshaking=3)
        async with cluster("a", "b", tuning=tuning) as n:
            a = n["a"]
            silent = [await asyncio.open_connection(*a.addr) for _ in range(3)]
            with structlog.testing.capture_logs() as logs:
                reader, writer = await asyncio.open_connection(*a.addr)
                assert await dropped(reader)  # closed at accept, long before hello_timeout
            assert any(e["event"] == "inbound_refused" and "handshake" in e["reason"] for e in logs)
            writer.close()
            for _r, w in silent:
                w.close()
                await w.wait_closed()
            # once they are gone, a member connects again
            await eventually(lambda: a.transport._in.handshaking == 0)
            _r, w = await asyncio.open_connection(*a.addr)
            w.write(encode_frames([hello("c"), hb("c", "a", 1)]))
            assert await a.next() == hb("c", "a", 1)
            w.close()
            await w.wait_closed()

    run(scenario())


def test_a_non_member_cannot_make_us_buffer_a_big_frame(run: Run) -> None:
    """Before admission the limit is 64 KiB; a non-member never gets past its Hello."""

    async def scenario() -> None:
        async with cluster("a", "b", is_member=members("a", "b")) as n:
            a = n["a"]
            big = struct.pack(">I", 60 << 20) + bytes([WIRE_VERSION]) + b"\x00" * 1024
            logs = await send_raw(a, encode_frames([hello("mallory")]) + big)
            assert any(e["event"] == "inbound_refused" for e in logs)

    run(scenario())


def test_fast_tuning_still_admits_known_members(run: Run) -> None:
    """Control: a correct member stream on the default tuning is delivered."""

    async def scenario() -> None:
        async with cluster("a", "b", is_member=members("a", "b", "c"), tuning=FAST) as n:
            _r, w = await asyncio.open_connection(*n["a"].addr)
            w.write(encode_frames([hello("c"), forged_append("c", "a", b"")]))
            got = await n["a"].next()
            assert isinstance(got, AppendEntries) and got.from_ == "c"
            w.close()
            await w.wait_closed()

    run(scenario())


def test_our_own_stall_does_not_drop_live_links(run: Run) -> None:
    """A blocked event loop leaves peers' bytes unread: that silence is ours, not theirs."""

    async def scenario() -> None:
        tuning = TransportTuning(
            backoff_initial=0.005, backoff_max=0.05, keepalive_interval=0.02, idle_timeout=0.2
        )
        with structlog.testing.capture_logs() as logs:
            async with cluster("a", "b", tuning=tuning) as n:
                await eventually(lambda: "b" in n["a"].transport.inbound_peers())
                await asyncio.sleep(0.05)  # let the housekeeping tick at least once
                time.sleep(0.5)  # block this loop (both nodes share it) past idle_timeout
                n["b"].transport.send([hb("b", "a", 1)])
                assert await n["a"].next() == hb("b", "a", 1)
                await asyncio.sleep(0.1)  # a few housekeeping ticks after the stall
                assert "b" in n["a"].transport.inbound_peers()
        assert not any(e["event"] == "inbound_dropped_idle" for e in logs)

    run(scenario())
