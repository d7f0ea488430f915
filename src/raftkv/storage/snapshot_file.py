"""The snapshot file format shared by every state backend, and its atomic writing.

Layout:
    magic      b"RKVSNAP" + one format-version byte
    frames     each: u32 little-endian payload length, u32 crc32(payload), payload
               payload = msgspec msgpack of one `Frame`:
                 first  SnapshotHeader(index, term, conf, cluster)
                 then   SnapshotChunk(items=[key0, value0, key1, value1, ...])  (any number)
                 last   SnapshotTrailer(records, chunks)                        then end of file

Rules:
- Keys and values are the UTF-8 bytes of the logical key and value: the format does not depend
  on a backend's own layout, so an LMDB snapshot installs into the memory backend and back.
- Every frame is CRC-checked; the trailer's counts and the end of file right after it catch a
  truncated or spliced file. A reader raises `CorruptSnapshotError` naming the file and fault.
- Readers stream: the installer loads records as they are verified, inside one transaction it
  aborts on error, so a bad file leaves the state as it was.
- Files are written to `<dest>.tmp`, fsynced, renamed over `dest`, and the directory fsynced: a
  crash leaves either no file or a complete one, never a torn one under the final name.
- While writing, the file is fdatasynced every `SYNC_EVERY_BYTES`: on ext4 (data=ordered) a
  log commit's fdatasync waits for the journal, which waits for every dirty page newly
  allocated to a file, so one fsync of a 200 MB snapshot at the end held the nodes' WAL
  commits for 50-140 ms. Flushing as it goes bounds what a commit can be stuck behind.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec

from raftkv.raft.types import ConfState, Index, Term
from raftkv.storage.errors import CorruptSnapshotError
from raftkv.storage.fsutil import fsync_dir

FORMAT_VERSION = 1
MAGIC = b"RKVSNAP" + bytes([FORMAT_VERSION])
MAX_FRAME_BYTES = 64 << 20  # a larger length field is corruption, not a frame to allocate
CHUNK_BYTES = 256 << 10  # target payload per chunk: big enough to amortize, small to stream
SYNC_EVERY_BYTES = 8 << 20  # written between two fdatasyncs of a snapshot being written
_FRAME = struct.Struct("<II")  # payload length, crc32 of payload


class SnapshotHeader(msgspec.Struct, frozen=True, array_like=True, gc=False, tag=1):
    index: Index
    term: Term
    conf: ConfState
    # The membership record (member addresses; `raftkv.runtime.members`), opaque here. Empty in
    # files written before it existed: the reader then keeps its own record.
    cluster: bytes = b""


class SnapshotChunk(msgspec.Struct, frozen=True, array_like=True, gc=False, tag=2):
    items: list[bytes]  # key, value, key, value, ... (flat: cheaper than pairs)


class SnapshotTrailer(msgspec.Struct, frozen=True, array_like=True, gc=False, tag=3):
    records: int
    chunks: int


Frame = SnapshotHeader | SnapshotChunk | SnapshotTrailer

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Frame] = msgspec.msgpack.Decoder(Frame)


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A snapshot's place in the log, its configuration, and its file (None when in memory)."""

    index: Index
    term: Term
    conf: ConfState
    path: Path | None
    size: int


class SnapshotWriter:
    """Streams one snapshot into `stream`: header now, `add()` records, then `finish()`."""

    def __init__(
        self, stream: BinaryIO, header: SnapshotHeader, chunk_bytes: int = CHUNK_BYTES
    ) -> None:
        self._stream = stream
        self._chunk_bytes = chunk_bytes
        self._items: list[bytes] = []
        self._pending = 0  # payload bytes in _items
        self.records = 0
        self.chunks = 0
        stream.write(MAGIC)
        self._frame(header)

    def _frame(self, frame: Frame) -> None:
        payload = _encoder.encode(frame)
        self._stream.write(_FRAME.pack(len(payload), zlib.crc32(payload)))
        self._stream.write(payload)

    def add(self, key: bytes, value: bytes) -> None:
        self._items.append(key)
        self._items.append(value)
        self.records += 1
        self._pending += len(key) + len(value) + 10
        if self._pending >= self._chunk_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._items:
            self._frame(SnapshotChunk(self._items))
            self.chunks += 1
            self._items = []
            self._pending = 0

    def finish(self) -> None:
        self._flush()
        self._frame(SnapshotTrailer(self.records, self.chunks))


class SnapshotReader:
    """Verifies and streams one snapshot from `stream`; `name` goes into error messages."""

    def __init__(self, stream: BinaryIO, name: str) -> None:
        self._stream = stream
        self._name = name
        magic = stream.read(len(MAGIC))
        if magic[:-1] != MAGIC[:-1]:
            raise self._corrupt("not a raftkv snapshot (bad magic)")
        if magic != MAGIC:
            raise self._corrupt(f"format version {magic[-1]}, this build reads {FORMAT_VERSION}")
        first = self._next_frame()
        if not isinstance(first, SnapshotHeader):
            raise self._corrupt("first frame is not a header")
        self.header = first

    def _corrupt(self, what: str) -> CorruptSnapshotError:
        return CorruptSnapshotError(f"snapshot {self._name} is corrupt: {what}")

    def _next_frame(self) -> Frame:
        raw = self._stream.read(_FRAME.size)
        if len(raw) < _FRAME.size:
            raise self._corrupt("truncated (no trailer)")
        length, crc = _FRAME.unpack(raw)
        if length > MAX_FRAME_BYTES:
            raise self._corrupt(f"frame length {length} exceeds {MAX_FRAME_BYTES}")
        payload = self._stream.read(length)
        if len(payload) < length:
            raise self._corrupt("truncated inside a frame")
        if zlib.crc32(payload) != crc:
            raise self._corrupt("frame CRC mismatch")
        try:
            return _decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise self._corrupt(f"undecodable frame: {exc}") from exc

    def records(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs in file order; raises CorruptSnapshotError at the first fault,
        at the latest after the last record (trailer check), so consume it to the end."""
        records = chunks = 0
        while True:
            frame = self._next_frame()
            match frame:
                case SnapshotChunk(items=items):
                    if len(items) % 2:
                        raise self._corrupt(f"chunk {chunks} has an odd item count")
                    chunks += 1
                    records += len(items) // 2
                    it = iter(items)
                    yield from zip(it, it, strict=True)
                case SnapshotTrailer(records=want_records, chunks=want_chunks):
                    if (want_records, want_chunks) != (records, chunks):
                        raise self._corrupt(
                            f"trailer says {want_records} records in {want_chunks} chunks, "
                            f"read {records} in {chunks}"
                        )
                    if self._stream.read(1):
                        raise self._corrupt("data after the trailer")
                    return
                case SnapshotHeader():
                    raise self._corrupt("second header")


def write_snapshot_file(
    dest: Path, header: SnapshotHeader, records: Iterable[tuple[bytes, bytes]]
) -> SnapshotInfo:
    """Write a complete snapshot to `dest` atomically (tmp file, fsync, rename, dir fsync)."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            writer = SnapshotWriter(f, header)
            chunks = synced = 0
            for key, value in records:
                writer.add(key, value)
                if writer.chunks != chunks:  # a chunk was written: time to flush?
                    chunks = writer.chunks
                    if f.tell() - synced >= SYNC_EVERY_BYTES:
                        f.flush()
                        os.fdatasync(f.fileno())  # bounded dirty data (module rules)
                        synced = f.tell()
            writer.finish()
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(dest.parent)
    return SnapshotInfo(header.index, header.term, header.conf, dest, size)


def verify_snapshot_file(path: Path) -> SnapshotHeader:
    """Read `path` to the end, checking every frame; CorruptSnapshotError if it is damaged."""
    with open(path, "rb") as f:
        reader = SnapshotReader(f, str(path))
        for _ in reader.records():
            pass
        return reader.header
