"""Snapshot files streamed between transports: intact, interleaved, and never half-published."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from raftkv.codec.wire import (
    PROTOCOL_VERSION,
    Hello,
    SnapshotChunk,
    SnapshotRejected,
    encode_frames,
)
from raftkv.raft.messages import AnyMessage, InstallSnapshot
from raftkv.raft.types import ConfState, Index, NodeId, Snapshot, SnapshotMeta, Term
from tests.unit.transport.transport_helpers import Node, eventually, hb, wire

Run = Callable[..., Any]


def install(frm: str, to: str, data: bytes, index: int = 100) -> InstallSnapshot:
    meta = SnapshotMeta(Index(index), Term(3), ConfState((NodeId("a"), NodeId("b")), ()))
    return InstallSnapshot(Term(3), NodeId(frm), NodeId(to), Snapshot(meta, data))


async def pair(tmp_path: Path, **kwargs: Any) -> tuple[Node, Node]:
    a = await Node("a", snapshot_dir=tmp_path / "a", **kwargs).start()
    b = await Node("b", snapshot_dir=tmp_path / "b", **kwargs).start()
    await wire([a, b])
    return a, b


def write_file(path: Path, size: int) -> bytes:
    data = random.Random(size).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def test_5mib_snapshot_arrives_intact_while_heartbeats_flow(run: Run, tmp_path: Path) -> None:
    src = tmp_path / "leader" / "snap.bin"
    content = write_file(src, (5 << 20) + 123)  # not a multiple of the chunk size

    async def scenario() -> None:
        a, b = await pair(tmp_path)
        try:
            msg = install("a", "b", str(src).encode())
            a.transport.send([msg])
            heartbeats_during_transfer = 0
            while True:  # ping-pong heartbeats until the snapshot is delivered
                a.transport.send([hb("a", "b", heartbeats_during_transfer)])
                got = await b.next()
                if isinstance(got, InstallSnapshot):
                    break
                assert got == hb("a", "b", heartbeats_during_transfer)
                heartbeats_during_transfer += 1
            assert heartbeats_during_transfer >= 2, "heartbeats starved by the snapshot"
            assert got.snapshot.meta == msg.snapshot.meta
            assert (got.term, got.from_, got.to) == (msg.term, msg.from_, msg.to)
            received = Path(got.snapshot.data.decode("utf-8"))
            assert received.parent == tmp_path / "b"
            assert received.read_bytes() == content
            assert [p.name for p in (tmp_path / "b").iterdir()] == [received.name]
            await eventually(lambda: a.snapshot_status == [(NodeId("b"), True)])
            assert src.read_bytes() == content  # the sender's file is left alone
        finally:
            await a.stop()
            await b.stop()

    run(scenario(), timeout=60)


def test_empty_snapshot_file(run: Run, tmp_path: Path) -> None:
    src = tmp_path / "empty.snap"
    src.write_bytes(b"")

    async def scenario() -> None:
        a, b = await pair(tmp_path)
        try:
            a.transport.send([install("a", "b", str(src).encode())])
            got = await b.next()
            assert isinstance(got, InstallSnapshot)
            assert Path(got.snapshot.data.decode()).read_bytes() == b""
        finally:
            await a.stop()
            await b.stop()

    run(scenario())


def test_newest_snapshot_supersedes_one_in_flight(run: Run, tmp_path: Path) -> None:
    first = tmp_path / "first.snap"
    second = tmp_path / "second.snap"
    write_file(first, 3 << 20)
    content = write_file(second, 1 << 20)

    async def scenario() -> None:
        a, b = await pair(tmp_path)
        try:
            a.transport.send([install("a", "b", str(first).encode(), index=10)])
            a.transport.send([install("a", "b", str(second).encode(), index=20)])
            got = await b.next()
            assert isinstance(got, InstallSnapshot)
            assert got.snapshot.meta.index == 20
            assert Path(got.snapshot.data.decode()).read_bytes() == content
            await eventually(lambda: a.snapshot_status == [(NodeId("b"), True)])
            a.transport.send([hb("a", "b", 1)])
            assert await b.next() == hb("a", "b", 1)  # nothing else was delivered in between
            assert len(list((tmp_path / "b").iterdir())) == 1
        finally:
            await a.stop()
            await b.stop()

    run(scenario())


def test_unreadable_snapshot_reports_failure(run: Run, tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = await pair(tmp_path)
        try:
            a.transport.send([install("a", "b", str(tmp_path / "missing.snap").encode())])
            await eventually(lambda: len(a.snapshot_status) == 1)
            a.transport.send([install("a", "b", b"\xff\xfe not utf-8")])
            await eventually(lambda: len(a.snapshot_status) == 2)
            assert a.snapshot_status == [(NodeId("b"), False)] * 2
            a.transport.send([hb("a", "b")])
            assert await b.next() == hb("a", "b")
        finally:
            await a.stop()
            await b.stop()

    run(scenario())


def test_snapshot_to_down_peer_reports_failure(run: Run, tmp_path: Path) -> None:
    async def scenario() -> None:
        a = await Node("a", snapshot_dir=tmp_path / "a").start()
        try:
            a.transport.update_peer(NodeId("b"), ("127.0.0.1", 1))
            a.transport.send([install("a", "b", b"/nonexistent")])
            await eventually(lambda: a.snapshot_status == [(NodeId("b"), False)])
        finally:
            await a.stop()

    run(scenario())


def test_inline_snapshot_without_snapshot_dir(run: Run) -> None:
    async def scenario() -> None:
        a = await Node("a").start()
        b = await Node("b").start()
        await wire([a, b])
        try:
            msg = install("a", "b", b"the whole state machine")
            a.transport.send([msg])
            assert await b.next() == msg
        finally:
            await a.stop()
            await b.stop()

    run(scenario())


HELLO = Hello(PROTOCOL_VERSION, "test", NodeId("x"))


def chunk(offset: int, data: bytes, total: int = 10) -> SnapshotChunk:
    return SnapshotChunk(Index(100), Term(3), offset, total, data)


@pytest.mark.parametrize(
    "frames",
    [
        [HELLO, chunk(0, b"12345")],  # then the sender vanishes
        [HELLO, chunk(0, b"12345"), install("x", "a", b"")],  # incomplete
        [HELLO, chunk(0, b"12345"), chunk(7, b"890")],  # gap
        [HELLO, chunk(0, b"12345"), chunk(5, b"6789012")],  # beyond total_size
        [HELLO, chunk(0, b"12345"), install("x", "a", b"inline")],  # mixed modes
    ],
    ids=["vanished", "incomplete", "gap", "overflow", "inline-in-file-mode"],
)
def test_broken_transfer_leaves_no_file(
    run: Run, tmp_path: Path, frames: list[AnyMessage | Hello | SnapshotChunk]
) -> None:
    snapdir = tmp_path / "a"

    async def scenario() -> None:
        a = await Node("a", snapshot_dir=snapdir).start()
        try:
            reader, writer = await asyncio.open_connection(*a.addr)
            try:
                writer.write(encode_frames(frames[:2]))
                # the temp file exists while the transfer is open ...
                await eventually(lambda: any(p.suffix == ".partial" for p in snapdir.iterdir()))
                writer.write(encode_frames(frames[2:]))
                if len(frames) == 2:
                    writer.close()
                async with asyncio.timeout(5):
                    assert await reader.read() == b""
            finally:
                writer.close()
                await writer.wait_closed()
            # ... and is gone once the connection is: nothing that could pass for a snapshot.
            await eventually(lambda: "x" not in a.transport.inbound_peers())
            assert list(snapdir.iterdir()) == []
            assert a.inbox.empty()
        finally:
            await a.stop()

    run(scenario())


def test_stale_partial_files_are_removed_at_start(run: Run, tmp_path: Path) -> None:
    snapdir = tmp_path / "a"
    snapdir.mkdir()
    (snapdir / "incoming-1-1-abc.partial").write_bytes(b"half")
    (snapdir / "snapshot-00000000000000000001-1-abc.snap").write_bytes(b"whole")

    async def scenario() -> None:
        a = await Node("a", snapshot_dir=snapdir).start()
        await a.stop()

    run(scenario())
    assert [p.name for p in snapdir.iterdir()] == ["snapshot-00000000000000000001-1-abc.snap"]


@pytest.mark.parametrize(("leader_format", "delivered"), [(4, True), (3, False)])
def test_snapshot_rejection_reaches_a_sender_that_knows_the_frame(
    run: Run, tmp_path: Path, leader_format: int, delivered: bool
) -> None:
    """A follower tells the sender its snapshot was discarded (`SnapshotRejected`) only if the
    sender advertised a data format that knows the frame: an older node would drop the
    connection on an unknown tag."""
    heard: list[tuple[NodeId, SnapshotRejected]] = []

    async def scenario() -> None:
        a = await Node(
            "a",
            snapshot_dir=tmp_path / "a",
            advertise=(leader_format, 2),
            on_snapshot_rejected=lambda p, m: heard.append((p, m)),
        ).start()
        b = await Node("b", snapshot_dir=tmp_path / "b").start()
        await wire([a, b])
        try:
            await eventually(lambda: NodeId("a") in b.transport.peer_versions())
            msg = SnapshotRejected(Index(100), Term(3), "frame 2: CRC mismatch")
            assert b.transport.report_snapshot_rejected(NodeId("a"), msg) is delivered
            b.transport.send([hb("b", "a", 7)])  # the same connection still carries traffic
            assert await a.next() == hb("b", "a", 7)
            assert heard == ([(NodeId("b"), msg)] if delivered else [])
        finally:
            await a.stop()
            await b.stop()

    run(scenario(), timeout=30)
