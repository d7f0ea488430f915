"""Read-only views of a running node for the operator's inspector (`GET /debug/...`).

Rules:
- Nothing here changes the node. Every read of disk (SQLite log, LMDB state, the snapshots
  directory) runs in a worker thread, never on the event loop: a SQLite read waits on the log's
  lock while the writer thread fsyncs, and a big key listing would stall the loop.
- Key listings are *stale* reads of the local applied state (no ReadIndex): they show what this
  node has applied, which is what an operator comparing nodes wants to see.
- `describe_entry` is the one place that turns a raw log entry into words (type + decoded
  command); the offline reader (`raftkv.ops.offline`) uses it too, so both views agree.
- Page sizes are bounded (`MAX_KEYS_PAGE`, `MAX_LOG_PAGE`) so one request cannot make a node
  read its whole database into memory.
- Nothing is answered by a node that refuses reads (halted, failed after a storage failure,
  stopping: `check_readable`, runtime/halt.py), checked before and again after the worker
  thread's read: its applied state may be ahead of or behind what is durable, and the log's
  entries carry keys and values too. The operator reads a stopped node's files offline
  (`raftkv inspect raft --data-dir`, ops/offline.py).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec

from raftkv.codec.commands import CommandDecodeError, decode_command
from raftkv.kv.registry import kind_of
from raftkv.raft.types import ConfChange, Entry, EntryKind, Index

if TYPE_CHECKING:
    from raftkv.runtime.driver import RaftDriver

MAX_KEYS_PAGE: Final = 10_000
MAX_KEYS_PAGE_BYTES: Final = 4 << 20  # key + value bytes in one /debug/keys page
_KEYS_BATCH: Final = 16  # pairs read per storage call: bounds memory held beyond the page
MAX_LOG_PAGE: Final = 1_000
_SNAP_RE: Final = re.compile(r"snap-(\d+)-(\d+)\.snap")
_conf_decoder: Final = msgspec.msgpack.Decoder(ConfChange)


@dataclass(frozen=True, slots=True)
class EntryView:
    """One log entry in words. `type` is noop | conf_change | undecodable | a command kind's
    registry name (put, delete, ...)."""

    index: int
    term: int
    type: str
    command: dict[str, object] | None  # the decoded command; None for a no-op
    bytes: int  # size of the entry's data


@dataclass(frozen=True, slots=True)
class SnapshotFileView:
    file: str
    index: int
    term: int
    bytes: int


@dataclass(frozen=True, slots=True)
class LogPage:
    """The log's shape plus entries [start, start + len(entries))."""

    first_index: int
    last_index: int
    entry_count: int
    snapshot_index: int
    bytes_on_disk: int
    snapshots: list[SnapshotFileView]
    entries: list[EntryView]


@dataclass(frozen=True, slots=True)
class KeysPage:
    """Up to `limit` (key, value) pairs after `after`; `next_after` is set when more may follow."""

    applied_index: int
    items: list[tuple[str, str]]
    next_after: str | None


def describe_entry(entry: Entry) -> EntryView:
    """The entry's type and decoded command; never raises on odd data (it says so instead)."""
    size = len(entry.data)
    if entry.kind == EntryKind.CONF_CHANGE:
        try:
            cc = _conf_decoder.decode(entry.data)
        except msgspec.DecodeError as exc:
            return EntryView(entry.index, entry.term, "undecodable", {"error": str(exc)}, size)
        command: dict[str, object] = {"op": cc.kind.name.lower(), "node_id": cc.node_id}
        if cc.context:
            command["context"] = cc.context.decode("utf-8", "replace")
        return EntryView(entry.index, entry.term, "conf_change", command, size)
    if size == 0:
        return EntryView(entry.index, entry.term, "noop", None, 0)  # §5.4.2 leader no-op
    try:
        cmd = decode_command(entry.data)
    except CommandDecodeError as exc:
        return EntryView(entry.index, entry.term, "undecodable", {"error": str(exc)}, size)
    # Generic over the registry: a new command kind shows up here with no change.
    fields = {name: getattr(cmd, name) for name in cmd.__struct_fields__}
    return EntryView(entry.index, entry.term, kind_of(cmd).name, fields, size)


def list_snapshots(snap_dir: Path) -> list[SnapshotFileView]:
    """Snapshot files in `snap_dir` (named snap-<term>-<index>.snap), oldest first."""
    out: list[SnapshotFileView] = []
    if not snap_dir.is_dir():
        return out
    for path in sorted(snap_dir.iterdir()):
        m = _SNAP_RE.fullmatch(path.name)
        if m is None:
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # pruned between listing and stat
            continue
        out.append(SnapshotFileView(path.name, int(m.group(2)), int(m.group(1)), size))
    return sorted(out, key=lambda s: s.index)


def clamp(value: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, value))


class NodeInspector:
    """Read-only access to one running node's log, state and snapshots (see the rules above)."""

    def __init__(self, driver: RaftDriver) -> None:
        self._driver = driver

    async def keys(
        self, prefix: str, limit: int, after: str | None, *, max_bytes: int = MAX_KEYS_PAGE_BYTES
    ) -> KeysPage:
        """Up to `limit` pairs and about `max_bytes` of keys + values (at least one pair)."""
        limit = clamp(limit, 1, MAX_KEYS_PAGE)
        max_bytes = clamp(max_bytes, 1, MAX_KEYS_PAGE_BYTES)
        self._driver.check_readable()
        sm = self._driver.sm
        applied = int(sm.applied_index)

        def read() -> tuple[list[tuple[str, str]], bool]:
            # Small batches, so that a page of huge values never sits in memory all at once.
            out: list[tuple[str, str]] = []
            size = 0
            cursor = after
            while True:
                batch = list(sm.items(prefix, _KEYS_BATCH, cursor))
                for key, value in batch:
                    if len(out) >= limit or (out and size + len(key) + len(value) > max_bytes):
                        return out, True
                    out.append((key, value))
                    size += len(key) + len(value)
                if len(batch) < _KEYS_BATCH:
                    return out, False
                cursor = batch[-1][0]

        items, more = await asyncio.to_thread(read)
        self._driver.check_readable()  # failed while the thread read: its answer is not sent
        return KeysPage(applied, items, items[-1][0] if more and items else None)

    async def log(self, start: int | None, limit: int) -> LogPage:
        """Entries from `start` (default: the last `limit` entries), with the log's shape."""
        limit = clamp(limit, 0, MAX_LOG_PAGE)
        durable = self._driver.durable
        snap_dir = self._driver.opts.data_dir / "snapshots"

        def read() -> LogPage:
            stats = durable.stats()
            lo = (
                start if start is not None else max(stats.first_index, stats.last_index - limit + 1)
            )
            entries = durable.read_entries(Index(lo), Index(lo + limit)) if limit else []
            return LogPage(
                first_index=int(stats.first_index),
                last_index=int(stats.last_index),
                entry_count=stats.entry_count,
                snapshot_index=int(stats.snapshot_index),
                bytes_on_disk=stats.bytes_on_disk,
                snapshots=list_snapshots(snap_dir),
                entries=[describe_entry(e) for e in entries],
            )

        self._driver.check_readable()
        page = await asyncio.to_thread(read)
        self._driver.check_readable()
        return page
