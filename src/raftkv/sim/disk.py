"""A simulated node's disk: what survives a crash.

Rules:
- `durable` holds what a completed fsync made durable (a MemoryStorage used as a plain record).
- Every Persist is first a *write*: queued in `unsynced` in order. A sync write becomes durable
  (with everything queued before it) when its fsync completes; a non-sync write stays queued.
- A crash keeps a random prefix of the queued writes (the kernel may or may not have flushed
  them, in order; each write is atomic like a SQLite transaction) and drops the rest.
- A restart rebuilds a fresh MemoryStorage from the durable record: snapshot, entries, hard state.
"""

from __future__ import annotations

import random

from raftkv.raft.ready import Persist
from raftkv.raft.storage import MemoryStorage
from raftkv.raft.types import ConfState, Entry, Index, Snapshot


def _apply(store: MemoryStorage, op: Persist) -> None:
    if op.snapshot is not None:
        store.apply_snapshot(op.snapshot)
    if op.entries:
        store.append(op.entries)
    if op.hard_state is not None:
        store.set_hard_state(op.hard_state)


def log_entries(store: MemoryStorage) -> list[Entry]:
    first, last = store.first_index(), store.last_index()
    if last < first:
        return []
    return store.entries(first, Index(last + 1), 1 << 62)


def copy_storage(src: MemoryStorage) -> MemoryStorage:
    snap = src.snapshot()
    out = MemoryStorage(conf=snap.meta.conf)
    out.apply_snapshot(snap)
    out.append(log_entries(src))
    out.set_hard_state(src.hard_state)
    return out


class Disk:
    def __init__(self, conf: ConfState) -> None:
        self.durable = MemoryStorage(conf=conf)
        self.unsynced: list[Persist] = []  # written, not yet made durable by an fsync
        self.fsyncs = 0

    def write(self, op: Persist) -> None:
        self.unsynced.append(op)

    def sync(self) -> None:
        """An fsync completed: every write queued so far is durable."""
        for op in self.unsynced:
            _apply(self.durable, op)
        self.unsynced.clear()
        self.fsyncs += 1

    def crash(self, rng: random.Random) -> int:
        """Keep a random prefix of the queued writes; returns how many survived."""
        keep = rng.randint(0, len(self.unsynced))
        for op in self.unsynced[:keep]:
            _apply(self.durable, op)
        self.unsynced.clear()
        return keep

    def compact(self, snap: Snapshot) -> None:
        """Make a snapshot durable and drop the log it covers (syncing queued writes first)."""
        self.sync()
        if snap.meta.index <= self.durable.snapshot().meta.index:
            return
        if snap.meta.index > self.durable.last_index():
            # the applied entries came from a snapshot already installed durably
            self.durable.apply_snapshot(snap)
            return
        self.durable.create_snapshot(snap.meta.index, snap.meta.conf, snap.data)
        self.durable.compact(snap.meta.index)

    def load(self) -> MemoryStorage:
        """The storage a restarted node starts from."""
        return copy_storage(self.durable)
