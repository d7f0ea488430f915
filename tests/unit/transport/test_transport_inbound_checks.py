"""What a bad or confused peer sends gets its connection dropped, and nothing else breaks."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import structlog

from raftkv.codec.wire import (
    PROTOCOL_VERSION,
    WIRE_VERSION,
    Hello,
    SnapshotChunk,
    encode_frame,
    encode_frames,
)
from raftkv.raft.types import Index, NodeId, Term
from raftkv.transport._common import TransportTuning
from tests.unit.transport.transport_helpers import cluster, hb

Run = Callable[..., Any]


def raw_frame(msgpack: bytes) -> bytes:
    return struct.pack(">I", len(msgpack) + 1) + bytes([WIRE_VERSION]) + msgpack


GOOD_HELLO = Hello(PROTOCOL_VERSION, "test", NodeId("x"))

BAD_STREAMS: dict[str, tuple[bytes, str]] = {
    "garbage": (b"\xde\xad\xbe\xef" * 8, "inbound_dropped_bad_frame"),
    "oversized-hello": (struct.pack(">I", 1 << 30), "inbound_dropped_bad_frame"),
    "oversized-frame": (
        encode_frame(GOOD_HELLO) + struct.pack(">I", (64 << 20) + 1),
        "inbound_dropped_bad_frame",
    ),
    "wrong-protocol-version": (
        encode_frame(Hello(PROTOCOL_VERSION + 1, "test", NodeId("x"))),
        "inbound_dropped_protocol_violation",
    ),
    "wrong-wire-version": (
        struct.pack(">I", 3) + bytes([WIRE_VERSION + 1]) + b"\x90\x90",
        "inbound_dropped_bad_frame",
    ),
    "wrong-cluster": (
        encode_frame(Hello(PROTOCOL_VERSION, "other", NodeId("x"))),
        "inbound_dropped_protocol_violation",
    ),
    "our-own-id": (
        encode_frame(Hello(PROTOCOL_VERSION, "test", NodeId("a"))),
        "inbound_dropped_protocol_violation",
    ),
    "no-hello-first": (encode_frame(hb("x", "a")), "inbound_dropped_protocol_violation"),
    "second-hello": (encode_frames([GOOD_HELLO, GOOD_HELLO]), "inbound_dropped_protocol_violation"),
    "spoofed-sender": (
        encode_frames([GOOD_HELLO, hb("b", "a")]),
        "inbound_dropped_protocol_violation",
    ),
    "misaddressed": (
        encode_frames([GOOD_HELLO, hb("x", "c")]),
        "inbound_dropped_protocol_violation",
    ),
    "unknown-tag-after-hello": (
        encode_frame(GOOD_HELLO) + raw_frame(msgspec.msgpack.encode(["Zzz", 1, "x", "a"])),
        "inbound_dropped_bad_frame",
    ),
    "snapshot-chunk-in-inline-mode": (
        encode_frames([GOOD_HELLO, SnapshotChunk(Index(1), Term(1), 0, 1, b"x")]),
        "inbound_dropped_protocol_violation",
    ),
}


async def expect_dropped(reader: asyncio.StreamReader) -> None:
    """The acceptor closes the connection: EOF or reset, within a deadline."""
    async with asyncio.timeout(5):
        try:
            while await reader.read(4096):
                pass
        except ConnectionResetError:
            pass


@pytest.mark.parametrize("case", sorted(BAD_STREAMS))
def test_bad_stream_is_dropped_and_others_keep_working(run: Run, case: str) -> None:
    payload, event = BAD_STREAMS[case]

    async def scenario() -> None:
        with structlog.testing.capture_logs() as logs:
            async with cluster("a", "b") as n:
                a = n["a"]
                reader, writer = await asyncio.open_connection(*a.addr)
                try:
                    writer.write(payload)
                    await expect_dropped(reader)
                finally:
                    writer.close()
                    await writer.wait_closed()
                # the good peer's link is untouched
                n["b"].transport.send([hb("b", "a", 9)])
                assert await a.next() == hb("b", "a", 9)
                assert a.inbox.empty()
        assert [e["event"] for e in logs if e["event"].startswith("inbound_dropped")] == [event]

    run(scenario())


def test_silent_connection_is_dropped_after_hello_timeout(run: Run) -> None:
    async def scenario() -> None:
        tuning = TransportTuning(hello_timeout=0.1)
        with structlog.testing.capture_logs() as logs:
            async with cluster("a", "b", tuning=tuning) as n:
                reader, writer = await asyncio.open_connection(*n["a"].addr)
                try:
                    await expect_dropped(reader)
                finally:
                    writer.close()
                    await writer.wait_closed()
        assert any(e["event"] == "inbound_dropped_no_hello" for e in logs)

    run(scenario())


def test_valid_raw_peer_is_accepted(run: Run) -> None:
    """The control for the cases above: a hand-written correct stream is delivered."""

    async def scenario() -> None:
        async with cluster("a", "b") as n:
            a = n["a"]
            _reader, writer = await asyncio.open_connection(*a.addr)
            try:
                writer.write(encode_frames([GOOD_HELLO, hb("x", "a", 3)]))
                assert await a.next() == hb("x", "a", 3)
                assert "x" in a.transport.inbound_peers()
            finally:
                writer.close()
                await writer.wait_closed()

    run(scenario())
