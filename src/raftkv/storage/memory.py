"""A dict-backed state machine with the same API as `LmdbState`, for tests and the simulator.

Rules:
- Same contract as `raftkv.storage.state` (apply/skip/gap rules, results, conf, snapshots in
  the shared file format), minus durability: `sync()` does nothing and state dies with the
  object. Its snapshots are byte-compatible with LMDB's, in either direction.
- Atomic like LMDB's write transaction: a batch that raises part-way (an undecodable command)
  leaves the state as it was, because it is applied to a copy that replaces the state only when
  the whole batch succeeded (O(state) per batch: fine for tests, not for production).
- One lock makes `apply`/`install` and the snapshot's copy of the data mutually atomic, so
  `build_snapshot` is safe on a worker thread while another thread applies.
- Deterministic: no clock, no randomness; key order is sorted (code-point = UTF-8 byte order).
  `build_snapshot_bytes`/`install_snapshot_bytes` give the simulator snapshots without files.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from raftkv.kv.commands import KeyValue
from raftkv.kv.mvcc import DictState, MVCCStore
from raftkv.raft.types import ConfState, Entry, Index, Term
from raftkv.storage.mvcc_image import dict_image, load_image
from raftkv.storage.snapshot_file import (
    SnapshotHeader,
    SnapshotInfo,
    SnapshotReader,
    SnapshotWriter,
    write_snapshot_file,
)
from raftkv.storage.state import (
    ApplyResult,
    StateMachine,
    apply_entry,
    display_value,
    first_new,
)

T = TypeVar("T")


class MemoryState:
    """The KV state machine in memory; same API as `LmdbState`."""

    def __init__(self, conf: ConfState | None = None) -> None:
        self._lock = threading.Lock()
        self._data = DictState()
        self._applied_index = Index(0)
        self._applied_term = Term(0)
        self._conf = conf or ConfState()
        self._cluster = b""

    @property
    def applied_index(self) -> Index:
        return self._applied_index

    @property
    def applied_term(self) -> Term:
        return self._applied_term

    @property
    def conf(self) -> ConfState:
        return self._conf

    @property
    def cluster(self) -> bytes:
        return self._cluster

    def apply(
        self,
        entries: Sequence[Entry],
        conf: ConfState | None = None,
        cluster: bytes | None = None,
    ) -> list[ApplyResult]:
        start = first_new(self._applied_index, entries, "memory state")
        results: list[ApplyResult] = [None] * len(entries)
        with self._lock:
            work = self._data.copy() if start < len(entries) else self._data
            for pos in range(start, len(entries)):
                results[pos] = apply_entry(work, entries[pos])
            self._data = work
            if start < len(entries):
                self._applied_index = entries[-1].index
                self._applied_term = entries[-1].term
            if conf is not None:
                self._conf = conf
            if cluster is not None:
                self._cluster = cluster
        return results

    def set_conf(self, conf: ConfState, cluster: bytes | None = None) -> None:
        self.apply((), conf, cluster)

    def sync(self) -> None:
        """Nothing to flush: memory has no durability."""

    def get(self, key: str) -> KeyValue | None:
        return self._data.get(key)

    def read(self, fn: Callable[[MVCCStore], T]) -> T:
        with self._lock:
            data = self._data  # replaced, never mutated, once published: a stable instant
        return fn(data)

    def items(
        self, prefix: str = "", limit: int | None = None, after: str | None = None
    ) -> Iterator[tuple[str, str]]:
        with self._lock:
            data = self._data
        out: list[tuple[str, str]] = []
        for kv in data.range(prefix, None, prefix, None, after):
            if limit is not None and len(out) >= limit:
                break
            out.append((kv.key, display_value(kv)))
        return iter(out)

    def __len__(self) -> int:
        return len(self._data)

    def _image(self) -> tuple[SnapshotHeader, list[tuple[bytes, bytes]]]:
        with self._lock:  # one instant: the data and its index/term/conf agree
            header = SnapshotHeader(
                self._applied_index, self._applied_term, self._conf, self._cluster
            )
            data = self._data  # never mutated once published (apply works on a copy)
        return header, list(dict_image(data))

    def build_snapshot(self, dest: Path) -> SnapshotInfo:
        header, records = self._image()
        return write_snapshot_file(Path(dest), header, records)

    def build_snapshot_bytes(self) -> tuple[SnapshotInfo, bytes]:
        header, records = self._image()
        buf = io.BytesIO()
        writer = SnapshotWriter(buf, header)
        for key, value in records:
            writer.add(key, value)
        writer.finish()
        data = buf.getvalue()
        return SnapshotInfo(header.index, header.term, header.conf, None, len(data)), data

    def _install(self, reader: SnapshotReader, name: str, path: Path | None) -> SnapshotInfo:
        fresh = DictState()
        load_image(reader.records(), fresh, name)
        h = reader.header
        with self._lock:
            self._data = fresh
            self._applied_index, self._applied_term, self._conf = h.index, h.term, h.conf
            if h.cluster:
                self._cluster = h.cluster
        size = path.stat().st_size if path is not None else 0
        return SnapshotInfo(h.index, h.term, h.conf, path, size)

    def install_snapshot(self, src: Path) -> SnapshotInfo:
        src = Path(src)
        with open(src, "rb") as f:
            return self._install(SnapshotReader(f, str(src)), str(src), src)

    def install_snapshot_bytes(self, data: bytes) -> SnapshotInfo:
        info = self._install(SnapshotReader(io.BytesIO(data), "<bytes>"), "<bytes>", None)
        return SnapshotInfo(info.index, info.term, info.conf, None, len(data))

    def close(self) -> None:
        """Nothing to release."""


if TYPE_CHECKING:  # mypy proves the backend fulfils the contract
    _contract: type[StateMachine] = MemoryState
