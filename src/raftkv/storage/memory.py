"""A dict-backed state machine with the same API as `LmdbState`, for tests and the simulator.

Rules:
- Same contract as `raftkv.storage.state` (apply/skip/gap rules, results, conf, snapshots in
  the shared file format), minus durability: `sync()` does nothing and state dies with the
  object. Its snapshots are byte-compatible with LMDB's, in either direction.
- Atomic like LMDB's write transaction: a batch that raises part-way (an undecodable command)
  leaves the state as it was, because it is applied to a copy-on-write overlay first.
- One lock makes `apply`/`install` and the snapshot's copy of the data mutually atomic, so
  `build_snapshot` is safe on a worker thread while another thread applies.
- Deterministic: no clock, no randomness; key order is sorted (code-point = UTF-8 byte order).
  `build_snapshot_bytes`/`install_snapshot_bytes` give the simulator snapshots without files.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from raftkv.kv.machine import DictState
from raftkv.raft.types import ConfState, Entry, Index, Term
from raftkv.storage.errors import CorruptSnapshotError
from raftkv.storage.snapshot_file import (
    SnapshotHeader,
    SnapshotInfo,
    SnapshotReader,
    SnapshotWriter,
    write_snapshot_file,
)
from raftkv.storage.state import ApplyResult, StateMachine, apply_entry, first_new


class _Overlay:
    """Writes of one batch, over a base DictState; merged only if the whole batch succeeds."""

    __slots__ = ("_base", "_writes")

    def __init__(self, base: DictState) -> None:
        self._base = base
        self._writes: dict[str, str | None] = {}  # None = deleted in this batch

    def get(self, key: str) -> str | None:
        if key in self._writes:
            return self._writes[key]
        return self._base.get(key)

    def put(self, key: str, value: str) -> None:
        self._writes[key] = value

    def delete(self, key: str) -> bool:
        existed = self.get(key) is not None
        self._writes[key] = None
        return existed

    def merge(self) -> None:
        for key, value in self._writes.items():
            if value is None:
                self._base.delete(key)
            else:
                self._base.put(key, value)


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
            overlay = _Overlay(self._data)
            for pos in range(start, len(entries)):
                results[pos] = apply_entry(overlay, entries[pos])
            overlay.merge()
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

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def items(
        self, prefix: str = "", limit: int | None = None, after: str | None = None
    ) -> Iterator[tuple[str, str]]:
        with self._lock:
            out: list[tuple[str, str]] = []
            for key, value in self._data.items(prefix):
                if limit is not None and len(out) >= limit:
                    break
                if after is None or key > after:
                    out.append((key, value))
        return iter(out)

    def __len__(self) -> int:
        return len(self._data)

    def _image(self) -> tuple[SnapshotHeader, list[tuple[bytes, bytes]]]:
        with self._lock:  # one instant: the data copy and its index/term/conf agree
            header = SnapshotHeader(
                self._applied_index, self._applied_term, self._conf, self._cluster
            )
            data = self._data.copy()
        return header, [(k.encode(), v.encode()) for k, v in data.items()]

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
        fresh: dict[str, str] = {}
        try:
            for kb, vb in reader.records():
                fresh[kb.decode()] = vb.decode()
        except UnicodeDecodeError as exc:
            raise CorruptSnapshotError(f"snapshot {name} is corrupt: {exc}") from exc
        h = reader.header
        with self._lock:
            self._data = DictState(fresh)
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
