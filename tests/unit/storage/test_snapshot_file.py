"""The snapshot file format on its own: framing, chunking, verification, atomic writing."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import msgspec
import pytest

from raftkv.raft.types import ConfState, Index, NodeId, Term
from raftkv.storage import snapshot_file
from raftkv.storage.errors import CorruptSnapshotError
from raftkv.storage.snapshot_file import (
    MAGIC,
    SnapshotChunk,
    SnapshotHeader,
    SnapshotReader,
    SnapshotWriter,
    write_snapshot_file,
)

HEADER = SnapshotHeader(Index(42), Term(3), ConfState(voters=(NodeId("a"), NodeId("b"))))


def build(records: list[tuple[bytes, bytes]], chunk_bytes: int = 64) -> bytes:
    buf = io.BytesIO()
    writer = SnapshotWriter(buf, HEADER, chunk_bytes=chunk_bytes)
    for key, value in records:
        writer.add(key, value)
    writer.finish()
    return buf.getvalue()


def read_all(data: bytes) -> tuple[SnapshotHeader, list[tuple[bytes, bytes]]]:
    reader = SnapshotReader(io.BytesIO(data), "test.snap")
    return reader.header, list(reader.records())


RECORDS = [(f"key{i:03}".encode(), f"value-{i}".encode() * (i % 5)) for i in range(100)]


def test_round_trip_over_many_chunks() -> None:
    data = build(RECORDS, chunk_bytes=64)
    assert data.startswith(MAGIC)
    header, records = read_all(data)
    assert header == HEADER
    assert records == RECORDS


def test_empty_snapshot_round_trips() -> None:
    header, records = read_all(build([]))
    assert header == HEADER
    assert records == []


@pytest.mark.parametrize("cut", [3, len(MAGIC) + 5, 200, -20, -1])
def test_truncated_file_is_refused(cut: int) -> None:
    data = build(RECORDS)
    fault = "bad magic" if 0 < cut < len(MAGIC) else "truncated"
    with pytest.raises(CorruptSnapshotError, match=f"test.snap is corrupt: .*{fault}"):
        read_all(data[:cut])


def test_every_flipped_byte_is_caught() -> None:
    data = build(RECORDS[:10], chunk_bytes=64)
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x40
        with pytest.raises(CorruptSnapshotError):
            read_all(bytes(bad))


def test_bad_magic_and_version() -> None:
    data = build(RECORDS)
    with pytest.raises(CorruptSnapshotError, match="bad magic"):
        read_all(b"NOTASNAP" + data[8:])
    with pytest.raises(CorruptSnapshotError, match="format version 9"):
        read_all(MAGIC[:-1] + b"\x09" + data[8:])


def test_trailing_data_is_refused() -> None:
    with pytest.raises(CorruptSnapshotError, match="data after the trailer"):
        read_all(build(RECORDS) + b"\x00")


def frame(payload: bytes) -> bytes:
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def test_dropped_chunk_is_caught_by_the_trailer() -> None:
    # A well-formed file with one whole chunk frame removed: every CRC passes, counts do not.
    enc = msgspec.msgpack.encode
    good = [
        frame(enc(HEADER)),
        frame(enc(SnapshotChunk([b"a", b"1"]))),
        frame(enc(SnapshotChunk([b"b", b"2"]))),
    ]
    trailer = frame(msgspec.msgpack.encode([3, 2, 2]))  # SnapshotTrailer(records=2, chunks=2)
    assert read_all(MAGIC + b"".join(good) + trailer)[1] == [(b"a", b"1"), (b"b", b"2")]
    with pytest.raises(CorruptSnapshotError, match="trailer says 2 records in 2 chunks"):
        read_all(MAGIC + good[0] + good[2] + trailer)


def test_oversized_frame_length_is_refused_without_allocating() -> None:
    data = MAGIC + struct.pack("<II", 0xFFFFFFF0, 0)
    with pytest.raises(CorruptSnapshotError, match="exceeds"):
        read_all(data)


def test_odd_chunk_is_refused() -> None:
    enc = msgspec.msgpack.encode
    data = MAGIC + frame(enc(HEADER)) + frame(enc(SnapshotChunk([b"a"])))
    with pytest.raises(CorruptSnapshotError, match="odd item count"):
        read_all(data)


def test_write_is_atomic_and_replaces_a_stale_tmp(tmp_path: Path) -> None:
    dest = tmp_path / "snap-42"
    # Leftovers of a crash between write and rename: a torn tmp file. It must not matter.
    (tmp_path / "snap-42.tmp").write_bytes(b"torn")
    info = write_snapshot_file(dest, HEADER, RECORDS)
    assert not (tmp_path / "snap-42.tmp").exists()
    assert info.path == dest
    assert info.size == dest.stat().st_size
    assert (info.index, info.term, info.conf) == (HEADER.index, HEADER.term, HEADER.conf)
    with open(dest, "rb") as f:
        reader = SnapshotReader(f, str(dest))
        assert list(reader.records()) == RECORDS


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    dest = tmp_path / "snap"

    def records() -> list[tuple[bytes, bytes]]:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_snapshot_file(dest, HEADER, records())
    assert list(tmp_path.iterdir()) == []


def test_a_large_snapshot_is_flushed_to_disk_as_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One fsync of a whole large file at the end held other files' commits behind it (ext4
    data=ordered): the writer fdatasyncs every SYNC_EVERY_BYTES, then fsyncs at the end."""
    monkeypatch.setattr(snapshot_file, "SYNC_EVERY_BYTES", 512 << 10)
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    records = [(b"k%03d" % i, bytes([i]) * 100_000) for i in range(30)]  # ~3 MB, 12 chunks
    dest = tmp_path / "snap"
    info = write_snapshot_file(dest, HEADER, records)
    assert len(synced) >= 5  # every ~512 KiB (two chunks), before the final fsync
    assert read_all(dest.read_bytes()) == (HEADER, records)
    assert info.size == dest.stat().st_size
