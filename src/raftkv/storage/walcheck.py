"""Protocol-aware check of SQLite's `-wal` file before the Raft log is opened.

SQLite's own recovery keeps the WAL's frames up to the first invalid one and silently drops
everything after it. That is right for a torn tail (the last transaction, never fsynced, never
acknowledged) and wrong for damage in the middle: every later transaction was acknowledged
(entries, votes), and dropping them can mean a double vote or a lost write. This module tells the
two apart, as protocol-aware crash recovery does (Alagappan et al., FAST '18), and must run
before SQLite opens the database (opening runs SQLite's recovery).

Format facts (sqlite.org/fileformat2.html, "WAL file format"):
- Header, 32 bytes, big-endian u32s: magic 0x377f0682/0x377f0683 (the low bit says whether
  checksums read the data as big-endian words), format version, page size, checkpoint
  sequence, salt-1, salt-2, checksum-1, checksum-2 (over the first 24 header bytes).
- Then frames of 24 + page-size bytes; frame header: page number, db size after commit (non-0
  only in a transaction's last, "commit" frame), salt-1, salt-2 (= the header's), checksum-1,
  checksum-2: a running checksum over the first 8 bytes of the frame header and the page,
  seeded with the previous frame's checksum (the header's for the first frame).
- The checksum: the bytes as u32 words x0, x1, ...; s0 += x[i] + s1; s1 += x[i+1] + s0, mod 2^32.
- A checkpoint restarts the WAL from the front with new salts; frames of the old generation
  remain past the new end and carry other salts: they are not damage.

Rules:
- A frame is valid on its own when its salts match the header and its checksum verifies seeded
  with the STORED checksum of the frame before it: so a frame after a damaged one is still
  checkable.
- Our writer runs one transaction at a time and COMMIT returns only after the WAL fsync
  (synchronous=FULL): a transaction with any frame after it in the WAL was durable, hence
  acknowledged. So: damage at frame k followed by a valid frame of a LATER transaction (one
  after a commit frame at or past k) = corruption: refuse to start, naming file and offset.
  Damage followed only by frames of the same (last) transaction = a torn tail: truncate the WAL
  after the last valid commit frame (fsynced), exactly what SQLite would have kept.
- A damaged WAL header with a valid commit frame behind it is corruption too (SQLite would
  ignore the whole WAL).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

HEADER_BYTES = 32
FRAME_HEADER_BYTES = 24
_MAGIC_LE = 0x377F0682
_MAGIC_BE = 0x377F0683
_HEADER = struct.Struct(">8I")
_FRAME = struct.Struct(">6I")
_MASK = 0xFFFFFFFF


class WalDamage(Exception):
    """Valid transactions follow damage in the WAL: they would be silently dropped."""

    def __init__(self, path: Path, offset: int, frame: int, what: str) -> None:
        self.path = path
        self.offset = offset
        self.frame = frame
        super().__init__(
            f"{path} is damaged at byte offset {offset} (frame {frame}: {what}), and valid "
            "transactions follow it: SQLite would silently drop them (acknowledged entries "
            "and votes)"
        )


@dataclass(frozen=True, slots=True)
class WalReport:
    frames: int  # whole frames in the file
    valid_frames: int  # the valid prefix SQLite keeps
    kept_bytes: int  # bytes up to the end of the last valid commit frame (0: nothing kept)
    truncated_bytes: int  # torn tail removed by `check_wal(..., repair=True)`


def wal_checksum(data: bytes, big_endian: bool, s0: int = 0, s1: int = 0) -> tuple[int, int]:
    """SQLite's WAL checksum of `data` (length a multiple of 8) seeded with (s0, s1)."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & _MASK
        s1 = (s1 + words[i + 1] + s0) & _MASK
    return s0, s1


def check_wal(path: Path, repair: bool = True) -> WalReport:
    """Verify `path` (a SQLite -wal file); raise WalDamage on mid-file damage, else truncate a
    torn tail (if `repair`) and return what was found."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < HEADER_BYTES:
        return _finish(path, data, 0, 0, 0, repair)
    magic, _version, page_size, _seq, salt1, salt2, ck1, ck2 = _HEADER.unpack_from(data)
    page_ok = page_size >= 512 and page_size <= 65536 and page_size & (page_size - 1) == 0
    big = magic == _MAGIC_BE
    header_ok = (
        magic in (_MAGIC_LE, _MAGIC_BE) and page_ok and wal_checksum(data[:24], big) == (ck1, ck2)
    )
    if not page_ok:
        # Without a page size no frame can be located; a WAL that short-lived is a torn
        # header (its first transaction never completed) only if it holds no whole frame of
        # the usual size.
        if len(data) > HEADER_BYTES + FRAME_HEADER_BYTES + 4096:
            raise WalDamage(path, 0, 0, "header unreadable (page size)")
        return _finish(path, data, 0, 0, 0, repair)
    frame_bytes = FRAME_HEADER_BYTES + page_size
    count = (len(data) - HEADER_BYTES) // frame_bytes

    def frame_at(i: int) -> tuple[int, tuple[int, ...]]:
        off = HEADER_BYTES + i * frame_bytes
        return off, _FRAME.unpack_from(data, off)

    def valid_alone(i: int, seed: tuple[int, int]) -> bool:
        off, (_pg, _size, f1, f2, c1, c2) = frame_at(i)
        if (f1, f2) != (salt1, salt2):
            return False
        body = data[off : off + 8] + data[off + FRAME_HEADER_BYTES : off + frame_bytes]
        return wal_checksum(body, big, *seed) == (c1, c2)

    # The valid prefix, as SQLite's recovery reads it.
    valid = 0
    kept = 0
    seed = (ck1, ck2)
    if header_ok:
        while valid < count and valid_alone(valid, seed):
            off, hdr = frame_at(valid)
            seed = (hdr[4], hdr[5])
            valid += 1
            if hdr[1] != 0:
                kept = off + frame_bytes
    first_bad = valid
    if first_bad < count or not header_ok:
        # Damage (or the end of this generation) at first_bad: is a later transaction behind
        # it? With a damaged header, "first_bad" is the header itself (frame 0 is then checked
        # with the header's stored checksum as seed).
        if header_ok:
            _off, bad_hdr = frame_at(first_bad)
            boundary_seen = bad_hdr[1] != 0 and (bad_hdr[2], bad_hdr[3]) == (salt1, salt2)
            prev = (bad_hdr[4], bad_hdr[5])
            start, where = first_bad + 1, HEADER_BYTES + first_bad * frame_bytes
            what = _what(bad_hdr, salt1, salt2)
        else:
            boundary_seen, prev = False, (ck1, ck2)
            start, where, what = 0, 0, "WAL header checksum mismatch"
        for j in range(start, count):
            _o, hdr = frame_at(j)
            ok = valid_alone(j, prev)
            if ok and boundary_seen:
                frame_no = (where - HEADER_BYTES) // frame_bytes + 1 if where else 0
                raise WalDamage(path, where, frame_no, what)
            if ok and hdr[1] != 0:
                boundary_seen = True
            prev = (hdr[4], hdr[5])
    return _finish(path, data, count, valid, kept, repair)


def _what(hdr: tuple[int, ...], salt1: int, salt2: int) -> str:
    if (hdr[2], hdr[3]) != (salt1, salt2):
        return "salt mismatch"
    return "checksum mismatch"


def _finish(path: Path, data: bytes, count: int, valid: int, kept: int, repair: bool) -> WalReport:
    """Truncate what SQLite would ignore anyway, when it is a torn tail of this generation."""
    cut = 0
    if repair and len(data) > kept and kept > 0:
        cut = len(data) - kept
        with open(path, "r+b") as f:
            f.truncate(kept)
            f.flush()
            os.fsync(f.fileno())
    return WalReport(frames=count, valid_frames=valid, kept_bytes=kept, truncated_bytes=cut)
