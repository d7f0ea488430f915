"""The core's read-only view of the stable log, and an in-memory implementation of it.

Rules:
- The core never writes storage: the driver appends what a Ready asked it to persist (after
  making it durable, or in the simulator after recording it), then calls `advance`.
- `MemoryStorage` holds the entries since its compaction point (the last snapshot, or earlier
  when entries are kept behind it for slow followers), as etcd's MemoryStorage does; both the
  simulator and the real runtime use it (the runtime mirrors its durable log into it, and
  `restore_log` rebuilds it from that log at restart).
- The dummy entry at position 0 of `_entries` carries the compaction point's (index, term) (the
  snapshot's, unless entries are kept behind it), so `term(first_index - 1)` is always
  answerable.
"""

from __future__ import annotations

from typing import Protocol

from raftkv.raft.errors import Compacted, InvariantViolation, Unavailable
from raftkv.raft.types import ConfState, Entry, HardState, Index, Snapshot, SnapshotMeta, Term


class LogView(Protocol):
    def initial_state(self) -> tuple[HardState, ConfState]: ...
    def first_index(self) -> Index: ...
    def last_index(self) -> Index: ...
    def term(self, index: Index) -> Term: ...
    def entries(self, lo: Index, hi: Index, max_bytes: int) -> list[Entry]: ...
    def snapshot(self) -> Snapshot: ...


def entry_size(entry: Entry) -> int:
    """Approximate wire size used for byte caps (data dominates)."""
    return len(entry.data) + 16


def limit_size(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """Prefix of `entries` within `max_bytes`, but always at least one entry (progress)."""
    total = 0
    for i, e in enumerate(entries):
        total += entry_size(e)
        if total > max_bytes and i > 0:
            return entries[:i]
    return entries


class MemoryStorage:
    def __init__(self, conf: ConfState | None = None) -> None:
        # _entries[0] is a dummy (snapshot index, snapshot term); real entries follow contiguously.
        self._entries: list[Entry] = [Entry(Term(0), Index(0))]
        self._hard_state = HardState()
        self._snapshot = Snapshot(SnapshotMeta(Index(0), Term(0), conf or ConfState()))

    # -- LogView ------------------------------------------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._snapshot.meta.conf

    def first_index(self) -> Index:
        return Index(self._entries[0].index + 1)

    def last_index(self) -> Index:
        return Index(self._entries[0].index + len(self._entries) - 1)

    def term(self, index: Index) -> Term:
        offset = self._entries[0].index
        if index < offset:
            raise Compacted(f"index {index} compacted (first {offset + 1})")
        if index - offset >= len(self._entries):
            raise Unavailable(f"index {index} beyond last {self.last_index()}")
        return self._entries[index - offset].term

    def entries(self, lo: Index, hi: Index, max_bytes: int) -> list[Entry]:
        """Entries in [lo, hi), at most max_bytes (but at least one)."""
        offset = self._entries[0].index
        if lo <= offset:
            raise Compacted(f"index {lo} compacted (first {offset + 1})")
        if hi > self.last_index() + 1:
            raise Unavailable(f"index {hi - 1} beyond last {self.last_index()}")
        return limit_size(self._entries[lo - offset : hi - offset], max_bytes)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- written by the driver ----------------------------------------------------------------
    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = hs

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        """Append, truncating any existing suffix that the new entries overwrite."""
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return  # all already compacted
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        offset = entries[0].index - self._entries[0].index
        if offset > len(self._entries):
            raise InvariantViolation(
                f"append gap: last {self.last_index()}, appending at {entries[0].index}"
            )
        del self._entries[offset:]
        self._entries.extend(entries)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the log by a snapshot (InstallSnapshot on a follower)."""
        if snap.meta.index <= self._snapshot.meta.index:
            return
        self._snapshot = snap
        self._entries = [Entry(snap.meta.term, snap.meta.index)]

    def restore_log(self, base: tuple[Index, Term], entries: list[Entry]) -> None:
        """Replace the log by a durable log's: the compaction point `base` (at or before the
        snapshot: entries kept behind it stay servable after a restart, as they were before)
        and the entries after it. Call after `apply_snapshot` of the durable snapshot."""
        snap = self._snapshot.meta
        if base[0] > snap.index:
            raise InvariantViolation(f"log base {base[0]} beyond the snapshot at {snap.index}")
        if entries and entries[0].index != base[0] + 1:
            raise InvariantViolation(f"log restore: entry {entries[0].index} after base {base[0]}")
        restored = [Entry(base[1], base[0]), *entries]
        if base[0] < snap.index:
            if len(restored) <= snap.index - base[0]:
                raise InvariantViolation(f"log restore: entries stop before snapshot {snap.index}")
            if restored[snap.index - base[0]].term != snap.term:
                raise InvariantViolation(f"log restore: term at snapshot {snap.index} differs")
        elif base[1] != snap.term:
            raise InvariantViolation(f"log restore: base term {base[1]} is not the snapshot's")
        self._entries = restored

    def create_snapshot(self, index: Index, conf: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot the application took at applied `index` (does not compact)."""
        if index <= self._snapshot.meta.index:
            return self._snapshot
        if index > self.last_index():
            raise InvariantViolation(f"snapshot {index} beyond last index {self.last_index()}")
        self._snapshot = Snapshot(SnapshotMeta(index, self.term(index), conf), data)
        return self._snapshot

    def compact(self, index: Index) -> list[Entry]:
        """Discard entries up to and including `index` (which must be <= the snapshot index).

        Returns the discarded entries: the caller decides when they are freed (100k entries
        are ~10 ms of deallocation, which a driver may spread over several loop turns)."""
        old = self._entries
        offset = old[0].index
        if index <= offset:
            return []
        if index > self.last_index():
            raise InvariantViolation(f"compact {index} beyond last index {self.last_index()}")
        keep = index - offset
        self._entries = [Entry(old[keep].term, old[keep].index), *old[keep + 1 :]]
        del old[keep + 1 :]  # still held by the new list: nothing is freed here
        return old
