"""Snapshot files over the peer connection: chunked sending and crash-safe receiving.

Rules:
- File mode (the transport has a `snapshot_dir`): an outgoing `InstallSnapshot`'s
  `snapshot.data` is the UTF-8 path of a local snapshot file. It is streamed as `SnapshotChunk`
  frames on the ordinary outbound connection, then the `InstallSnapshot` itself goes with
  `data=b""` and completes the transfer. The receiver delivers that message with `data` = the
  UTF-8 path of the received file, which from then on belongs to the caller.
- Heartbeats are not starved: each chunk is read in a worker thread (`asyncio.to_thread`) and
  the sender waits for the socket's write buffer to drain before reading the next, so at most
  about one chunk sits ahead of any other frame, and other messages are written between chunks.
  Sharing the connection keeps the chunks and their `InstallSnapshot` in order for free.
- All file I/O (open, read, write, fsync, rename) runs in worker threads, never on the loop,
  except `close`/`unlink` of an abandoned file, which are cheap and must also work while a task
  is being cancelled.
- Received data goes to a `*.partial` temp file; only a complete, fsynced file is renamed to
  its final `*.snap` name (and the directory fsynced). A broken transfer deletes its temp file;
  a crash can leave a `*.partial`, which `remove_stale_partials` deletes at start. Nothing with
  the final name is ever incomplete.
- Sizes are untrusted: the announced `total_size` is capped (`raft.max_snapshot_bytes`, checked
  in `codec.validate`) and must fit in the directory's free space minus a reserve before the
  first byte is written; no chunk may go beyond it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec
from structlog.typing import FilteringBoundLogger

from raftkv.codec.wire import SnapshotChunk
from raftkv.raft.messages import InstallSnapshot
from raftkv.raft.types import Index, NodeId, Term
from raftkv.transport._common import ProtocolViolation
from raftkv.transport._outbound import OutboundPeer

PARTIAL_SUFFIX = ".partial"
FINAL_SUFFIX = ".snap"


async def stream_snapshot(
    peer: OutboundPeer, msg: InstallSnapshot, chunk_bytes: int, log: FilteringBoundLogger
) -> bool:
    """Send the snapshot file named by `msg.snapshot.data`, then `msg` with empty data.

    Returns True once everything is handed to the socket; False (logged) if the file cannot be
    read or the connection is not there or changes during the transfer.
    """
    writer = peer.writer
    if writer is None or writer.transport.is_closing():
        return False
    meta = msg.snapshot.meta
    try:
        path = msg.snapshot.data.decode("utf-8")
    except UnicodeDecodeError:
        log.error("snapshot_data_not_a_path", index=meta.index, term=meta.term)
        return False
    try:
        file = await asyncio.to_thread(open, path, "rb")
    except OSError as exc:
        log.error("snapshot_file_unreadable", path=path, error=str(exc))
        return False
    try:
        size = await asyncio.to_thread(_file_size, file)
        offset = 0
        while True:
            data = await asyncio.to_thread(file.read, chunk_bytes)
            if peer.writer is not writer:
                raise ConnectionResetError("connection replaced during snapshot transfer")
            # An empty file still sends one chunk so the receiver creates it.
            if (data or offset == 0) and not peer.flush(
                (SnapshotChunk(meta.index, meta.term, offset, size, data),)
            ):
                raise ConnectionResetError("peer not writable")
            offset += len(data)
            # Back-pressure: the next chunk is read only once this one has mostly left.
            await writer.drain()
            if not data or offset >= size:
                break
        if offset != size:
            log.error("snapshot_file_changed_size", path=path, expected=size, read=offset)
            return False
        done = _with_data(msg, b"")
        if not peer.flush((done,)):
            raise ConnectionResetError("peer not writable")
        log.info("snapshot_sent", index=meta.index, term=meta.term, size=size)
        return True
    except OSError as exc:  # includes ConnectionError
        log.warning("snapshot_send_failed", index=meta.index, term=meta.term, error=str(exc))
        return False
    finally:
        file.close()


def _with_data(msg: InstallSnapshot, data: bytes) -> InstallSnapshot:
    return msgspec.structs.replace(msg, snapshot=msgspec.structs.replace(msg.snapshot, data=data))


def _file_size(file: BinaryIO) -> int:
    return os.fstat(file.fileno()).st_size


def remove_stale_partials(snapshot_dir: Path) -> int:
    """Delete temp files left by a crash mid-transfer (blocking; call from a thread)."""
    removed = 0
    for path in snapshot_dir.glob(f"*{PARTIAL_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


@dataclass(slots=True)
class _Incoming:
    index: Index
    term: Term
    total_size: int
    received: int
    token: str  # makes the temp and final names unique per transfer
    temp_path: Path
    file: BinaryIO


class SnapshotReceiver:
    """Receives the snapshot transfers of one inbound connection (one at a time, in order)."""

    def __init__(
        self,
        snapshot_dir: Path,
        peer_id: NodeId,
        log: FilteringBoundLogger,
        *,
        free_reserve: int = 0,
    ) -> None:
        self._dir = snapshot_dir
        self._free_reserve = free_reserve
        self._peer_id = peer_id
        self._log = log
        self._current: _Incoming | None = None

    async def add_chunk(self, chunk: SnapshotChunk) -> None:
        if chunk.offset == 0:
            # A new transfer (the sender gave up on the previous one, or this is the first).
            self.discard()
            # The size was capped by `check_message` (raft.max_snapshot_bytes); it must also
            # fit on this disk with room to spare, or a forged size could fill it.
            free = (await asyncio.to_thread(shutil.disk_usage, self._dir)).free
            if chunk.total_size + self._free_reserve > free:
                raise ProtocolViolation(
                    f"snapshot of {chunk.total_size} bytes does not fit: {free} bytes free in "
                    f"{self._dir}, {self._free_reserve} kept in reserve"
                )
            token = secrets.token_hex(8)
            temp_path = self._dir / f"incoming-{chunk.index}-{chunk.term}-{token}{PARTIAL_SUFFIX}"
            file = await asyncio.to_thread(open, temp_path, "xb")
            self._current = _Incoming(
                chunk.index, chunk.term, chunk.total_size, 0, token, temp_path, file
            )
        current = self._current
        if (
            current is None
            or (chunk.index, chunk.term, chunk.total_size)
            != (current.index, current.term, current.total_size)
            or chunk.offset != current.received
        ):
            raise ProtocolViolation(
                f"snapshot chunk out of sequence (index {chunk.index}, offset {chunk.offset})"
            )
        if current.received + len(chunk.data) > current.total_size:
            raise ProtocolViolation("snapshot chunk beyond the announced size")
        await asyncio.to_thread(current.file.write, chunk.data)
        current.received += len(chunk.data)

    async def complete(self, msg: InstallSnapshot) -> InstallSnapshot:
        """Finish the transfer `msg` announces; returns `msg` with data = the file's UTF-8 path."""
        current = self._current
        meta = msg.snapshot.meta
        if msg.snapshot.data:
            raise ProtocolViolation("inline snapshot data while snapshots travel as files")
        if current is None or (current.index, current.term) != (meta.index, meta.term):
            raise ProtocolViolation(f"InstallSnapshot at index {meta.index} without its chunks")
        if current.received != current.total_size:
            raise ProtocolViolation(
                f"snapshot incomplete: {current.received} of {current.total_size} bytes"
            )
        final = self._dir / (
            f"snapshot-{meta.index:020d}-{meta.term}-{current.token}{FINAL_SUFFIX}"
        )
        await asyncio.to_thread(_finish, current.file, current.temp_path, final)
        self._current = None
        self._log.info("snapshot_received", index=meta.index, term=meta.term, path=str(final))
        return _with_data(msg, str(final).encode("utf-8"))

    def discard(self) -> None:
        """Drop an unfinished transfer and its temp file."""
        current, self._current = self._current, None
        if current is None:
            return
        current.file.close()
        with contextlib.suppress(FileNotFoundError):
            current.temp_path.unlink()
        self._log.info(
            "snapshot_transfer_abandoned",
            index=current.index,
            received=current.received,
            total=current.total_size,
        )


def _finish(file: BinaryIO, temp_path: Path, final: Path) -> None:
    """fsync the data, publish it under its final name, fsync the directory (blocking)."""
    file.flush()
    os.fsync(file.fileno())
    file.close()
    os.rename(temp_path, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
