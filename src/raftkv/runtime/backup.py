"""Backups of a running node: one consistent, linearizable snapshot file at a time.

Rules:
- A backup reflects every write acknowledged before it was asked for: `RaftDriver.snapshot_copy`
  runs a ReadIndex barrier, then the state machine's own snapshot build (one LMDB read
  transaction, so data, applied index, term and configuration agree) — the code automatic
  snapshots use, in the same file format (`storage/snapshot_file.py`, CRC per frame).
- One backup at a time per node (`BackupBusy` otherwise): each is a full copy of the state on the
  node's disk until it has been streamed.
- Files live in `<node dir>/backup/` and are removed when the `make()` context ends, streamed or
  not; leftovers of a node killed mid-backup are removed when the next backup starts.
- The SHA-256 of the file is computed (in a worker thread) before the caller streams it, so it
  can travel in a header and the receiver can check what it wrote.
- A node that refuses reads (halted, failed after a storage failure, stopping: runtime/halt.py
  `check_readable`) makes no backup: its state may be ahead of or behind what is durable. The
  barrier refuses at the start; `make` checks again once the file is built and hashed, and the
  streaming caller before each chunk (`check_readable`), so a failure cuts the body short
  (the receiver checks its length and SHA-256 and keeps nothing).
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from raftkv.runtime.driver import RaftDriver

HASH_CHUNK: Final = 1 << 20


class BackupBusy(Exception):
    """Another backup of this node is being made or streamed."""


@dataclass(frozen=True, slots=True)
class Backup:
    path: Path
    node_id: str
    index: int  # the last log index the state reflects
    term: int  # that entry's term
    size: int  # bytes
    sha256: str  # hex digest of the file


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Backups:
    def __init__(self, driver: RaftDriver) -> None:
        self._driver = driver
        self._dir = driver.opts.data_dir / "backup"
        self._busy = False

    @asynccontextmanager
    async def make(self) -> AsyncIterator[Backup]:
        if self._busy:
            raise BackupBusy("a backup of this node is already in progress")
        self._busy = True
        try:
            await asyncio.to_thread(_fresh_dir, self._dir)
            dest = self._dir / "backup.snap"
            info = await self._driver.snapshot_copy(dest)
            sha = await asyncio.to_thread(file_sha256, dest)
            self._driver.check_readable()  # the node failed while the copy was made
            yield Backup(dest, self._driver.id, info.index, info.term, info.size, sha)
        finally:
            await asyncio.to_thread(shutil.rmtree, self._dir, True)
            self._busy = False

    def check_readable(self) -> None:
        """Raise NodeHalted or NodeStopping once the node refuses reads (module rules)."""
        self._driver.check_readable()


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
