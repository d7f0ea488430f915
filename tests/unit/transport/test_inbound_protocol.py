"""The inbound connection as a Protocol (`_inbound_conn.py`), driven byte by byte through a
fake transport: frames split across receives, delivery within the receive, limits, the
pause behind snapshot file I/O."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from raftkv.codec.forward import ForwardBatch, ForwardedReply, ForwardedRequest, ForwardReplies
from raftkv.codec.wire import (
    PROTOCOL_VERSION,
    WIRE_VERSION,
    Hello,
    SnapshotChunk,
    encode_frame,
    encode_frames,
)
from raftkv.raft.messages import AnyMessage, AppendEntries
from raftkv.raft.types import Entry, EntryKind, Index, NodeId, Term
from raftkv.transport._common import TransportTuning
from raftkv.transport._handshake import HELLO_MAX_BYTES
from raftkv.transport._inbound import InboundSide
from raftkv.transport._inbound_conn import InboundConnection
from tests.unit.transport.transport_helpers import eventually, hb

Run = Callable[..., Any]

HELLO = encode_frame(Hello(PROTOCOL_VERSION, "test", NodeId("b"), 1, 1, 1))


class FakeTransport:
    """Just what InboundConnection uses of a stream transport."""

    def __init__(self, protocol: InboundConnection) -> None:
        self.protocol = protocol
        self.closing = False
        self.paused = False
        self.pauses = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.9", 4242) if name == "peername" else default

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)


class Side:
    def __init__(self, snapshot_dir: Path | None = None, **tuning: Any) -> None:
        self.got: list[AnyMessage] = []
        self.forwards: list[ForwardBatch | ForwardReplies] = []
        self.down: list[NodeId] = []
        self.side = InboundSide(
            node_id=NodeId("a"),
            cluster_name="test",
            is_member=lambda _peer: True,
            on_message=self.got.append,
            on_peer_up=lambda _peer: None,
            on_peer_down=self.down.append,
            on_forward=lambda _peer, frame: self.forwards.append(frame) is None,
            forwarding=1,
            on_snapshot_rejected=lambda _peer, _msg: None,
            snapshot_dir=snapshot_dir,
            max_frame_bytes=1 << 20,
            tuning=TransportTuning(**tuning),
            tls=None,
            logger=structlog.get_logger("test"),
        )
        self.side.running = True

    def connect(self) -> tuple[InboundConnection, FakeTransport]:
        conn = self.side.connection()
        transport = FakeTransport(conn)
        conn.connection_made(transport)  # type: ignore[arg-type]
        return conn, transport


def append(index: int, size: int = 10) -> AppendEntries:
    entry = Entry(Term(1), Index(index), EntryKind.NORMAL, b"x" * size)
    return AppendEntries(
        Term(1), NodeId("b"), NodeId("a"), Index(index - 1), Term(1), (entry,), Index(0)
    )


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_frames_split_anywhere_arrive_whole_and_in_order(run: Run, step: int) -> None:
    async def scenario() -> None:
        s = Side()
        conn, _t = s.connect()
        msgs = [hb("b", "a", i) for i in range(5)] + [append(6, 300), hb("b", "a", 7)]
        data = HELLO + encode_frames(msgs)
        for pos in range(0, len(data), step):
            conn.data_received(data[pos : pos + step])
        assert s.got == msgs
        conn.abort()
        await s.side.wait_closed()
        assert s.down == ["b"]

    run(scenario())


def test_every_frame_of_a_receive_is_stepped_within_the_receive(run: Run) -> None:
    """No reader task between the socket and the core: a receive's frames reach on_message
    before data_received returns (fails against a transport that steps them a turn later)."""

    async def scenario() -> None:
        s = Side()
        conn, _t = s.connect()
        conn.data_received(HELLO + encode_frame(hb("b", "a", 1)))
        assert s.got == [hb("b", "a", 1)]
        conn.data_received(encode_frames([append(2), hb("b", "a", 2)]))
        assert s.got == [hb("b", "a", 1), append(2), hb("b", "a", 2)]
        conn.abort()
        await s.side.wait_closed()

    run(scenario())


def test_a_big_frame_behind_the_hello_in_the_same_receive_is_taken(run: Run) -> None:
    """The Hello's 64 KiB limit is for the Hello only (fails if the frames behind it in the
    same receive are held to it)."""

    async def scenario() -> None:
        s = Side()
        conn, t = s.connect()
        big = append(2, HELLO_MAX_BYTES * 2)
        conn.data_received(HELLO + encode_frame(big))
        assert s.got == [big]
        assert not t.closing
        conn.abort()
        await s.side.wait_closed()

    run(scenario())


@pytest.mark.parametrize(
    ("tail", "event"),
    [
        (struct.pack(">I", (1 << 20) + 1), "inbound_dropped_bad_frame"),  # over the limit
        (
            struct.pack(">I", 4) + bytes([WIRE_VERSION]) + b"\xc1\xc1\xc1",
            "inbound_dropped_bad_frame",
        ),
        (encode_frame(hb("c", "a")), "inbound_dropped_protocol_violation"),  # spoofed sender
    ],
    ids=["oversized", "malformed", "spoofed"],
)
def test_a_bad_frame_split_over_receives_drops_the_connection_after_the_good_ones(
    run: Run, tail: bytes, event: str
) -> None:
    async def scenario() -> None:
        s = Side()
        conn, t = s.connect()
        good = [hb("b", "a", 1), hb("b", "a", 2)]
        data = HELLO + encode_frames(good) + tail + encode_frame(hb("b", "a", 3))
        with structlog.testing.capture_logs() as logs:
            for pos in range(0, len(data), 2):
                conn.data_received(data[pos : pos + 2])
            await s.side.wait_closed()
        assert s.got == good  # nothing after the bad frame
        assert t.closing
        events = [e["event"] for e in logs if e["event"].startswith("inbound_")]
        assert events == ["inbound_connected", event]
        assert s.down == ["b"]

    run(scenario())


def test_an_oversized_hello_is_refused_on_its_length_prefix(run: Run) -> None:
    async def scenario() -> None:
        s = Side()
        conn, t = s.connect()
        with structlog.testing.capture_logs() as logs:
            conn.data_received(struct.pack(">I", HELLO_MAX_BYTES + 1))
            await s.side.wait_closed()
        assert t.closing
        assert any(e["event"] == "inbound_dropped_bad_frame" for e in logs)
        assert s.side.handshaking == 0  # its place among the handshaking is given back

    run(scenario())


def test_no_hello_within_the_timeout_drops_the_connection(run: Run) -> None:
    async def scenario() -> None:
        s = Side(hello_timeout=0.01)
        conn, t = s.connect()
        conn.data_received(HELLO[:3])
        with structlog.testing.capture_logs() as logs:
            await s.side.wait_closed()
        assert t.closing
        assert [e["event"] for e in logs] == ["inbound_dropped_no_hello"]
        assert s.side.handshaking == 0

    run(scenario())


def test_frames_behind_snapshot_file_io_wait_with_reading_paused(run: Run, tmp_path: Path) -> None:
    """A chunk is written in a task: reading pauses, the frames already received wait behind
    it, frames of a further receive too, and all are delivered in order, then reading resumes."""

    async def scenario() -> None:
        s = Side(snapshot_dir=tmp_path)
        conn, t = s.connect()
        chunk = SnapshotChunk(Index(5), Term(1), 0, 4, b"abcd")
        conn.data_received(HELLO + encode_frames([hb("b", "a", 1), chunk, hb("b", "a", 2)]))
        assert s.got == [hb("b", "a", 1)]  # the heartbeat behind the chunk waits
        assert t.paused
        conn.data_received(encode_frame(hb("b", "a", 3)))  # one more receive while paused
        await eventually(lambda: not t.paused)
        assert s.got == [hb("b", "a", 1), hb("b", "a", 2), hb("b", "a", 3)]
        conn.data_received(encode_frame(hb("b", "a", 4)))  # and straight through again
        assert s.got[-1] == hb("b", "a", 4)
        conn.abort()
        await s.side.wait_closed()
        assert not list(tmp_path.iterdir())  # the unfinished transfer was discarded

    run(scenario())


def test_forward_frames_go_to_their_handler_in_stream_order(run: Run) -> None:
    async def scenario() -> None:
        s = Side()
        conn, _t = s.connect()
        batch = ForwardBatch((ForwardedRequest(1, "PUT", "/kv/k", (), b"v"),))
        replies = ForwardReplies((ForwardedReply(1, 200, (), b""),))
        conn.data_received(HELLO + encode_frames([batch, hb("b", "a", 1), replies]))
        assert s.forwards == [batch, replies]
        assert s.got == [hb("b", "a", 1)]
        conn.abort()
        await s.side.wait_closed()

    run(scenario())
