"""`RaftLog`: the core's view of its log = stable storage + an unstable tail not yet persisted.

Rules:
- `unstable_entries` start at `unstable_offset`; everything below comes from storage. After a
  follower truncates (§5.3), the offset moves down and storage's stale suffix is overwritten by
  the next persist; until then lookups prefer the unstable tail.
- `persisted_index` = unstable_offset - 1: the last index known durable on this node. A leader
  counts itself toward a quorum only up to here (thesis §10.2.1).
- Invariants: applied <= committed <= last_index; committed entries are never truncated.
"""

from __future__ import annotations

from raftkv.raft.errors import Compacted, InvariantViolation, Unavailable
from raftkv.raft.storage import LogView, limit_size
from raftkv.raft.types import Entry, Index, Snapshot, Term


class RaftLog:
    def __init__(self, storage: LogView) -> None:
        self.storage = storage
        self.unstable_offset: Index = Index(storage.last_index() + 1)  # first unstable index
        self.unstable_entries: list[Entry] = []  # contiguous from unstable_offset
        self.unstable_snapshot: Snapshot | None = None  # received, not yet persisted
        # Entries kept behind the snapshot (for slow followers) were applied before it was
        # taken: never hand them out again (a conf change among them would be re-applied).
        start = max(storage.first_index() - 1, storage.snapshot().meta.index)
        self.committed: Index = Index(start)  # committed <= last_index
        self.applied: Index = Index(start)  # applied <= committed

    # -- bounds -------------------------------------------------------------------------------
    def first_index(self) -> Index:
        if self.unstable_snapshot is not None:
            return Index(self.unstable_snapshot.meta.index + 1)
        return self.storage.first_index()

    def last_index(self) -> Index:
        if self.unstable_entries:
            return Index(self.unstable_offset + len(self.unstable_entries) - 1)
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.meta.index
        return Index(self.unstable_offset - 1)

    @property
    def persisted_index(self) -> Index:
        return Index(self.unstable_offset - 1)

    def last_term(self) -> Term:
        t = self.term(self.last_index())
        assert t is not None
        return t

    # -- lookups ------------------------------------------------------------------------------
    def term(self, index: Index) -> Term | None:
        """Term at `index`, or None when it is compacted away or beyond the last index."""
        snap = self.unstable_snapshot
        if snap is not None:
            if index == snap.meta.index:
                return snap.meta.term
            if index < snap.meta.index:
                return None
        if self.unstable_entries and index >= self.unstable_offset:
            pos = index - self.unstable_offset
            return self.unstable_entries[pos].term if pos < len(self.unstable_entries) else None
        if index >= self.unstable_offset:
            return None
        try:
            return self.storage.term(index)
        except (Compacted, Unavailable):
            return None

    def match_term(self, index: Index, term: Term) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: Index, last_term: Term) -> bool:
        """§5.4.1: a candidate's log is at least as up-to-date as ours."""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def slice(self, lo: Index, hi: Index, max_bytes: int) -> list[Entry]:
        """Entries in [lo, hi) within max_bytes (at least one). Raises Compacted below first."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise Compacted(f"index {lo} is compacted")
        if hi > self.last_index() + 1:
            raise InvariantViolation(f"slice [{lo}, {hi}) beyond last {self.last_index()}")
        out: list[Entry] = []
        if lo < self.unstable_offset:
            out = self.storage.entries(lo, Index(min(hi, self.unstable_offset)), max_bytes)
            if len(out) < min(hi, self.unstable_offset) - lo:
                return out  # byte cap reached inside storage
        if hi > self.unstable_offset:
            start = max(lo, self.unstable_offset) - self.unstable_offset
            out = out + self.unstable_entries[start : hi - self.unstable_offset]
        return limit_size(out, max_bytes)

    def find_conflict_by_term(self, index: Index, term: Term) -> Index:
        """Largest i <= index with term(i) <= term (fast back-off hint, etcd's rule)."""
        i = index
        while i > 0:
            t = self.term(i)
            if t is None or t <= term:
                return i  # a compacted index is a safe lower bound
            i = Index(i - 1)
        return Index(0)

    # -- mutation -----------------------------------------------------------------------------
    def append(self, entries: list[Entry]) -> None:
        """Append entries after truncating any suffix from entries[0].index on (§5.3)."""
        if not entries:
            return
        after = entries[0].index
        if after <= self.committed:
            raise InvariantViolation(f"truncating committed index {after} <= {self.committed}")
        end = self.unstable_offset + len(self.unstable_entries)
        if after == end:
            self.unstable_entries.extend(entries)
        elif after <= self.unstable_offset:
            # Replace the whole unstable tail; storage's stale suffix is overwritten on persist.
            self.unstable_offset = after
            self.unstable_entries = list(entries)
        else:
            del self.unstable_entries[after - self.unstable_offset :]
            self.unstable_entries.extend(entries)

    def maybe_append(
        self, prev_index: Index, prev_term: Term, commit: Index, entries: tuple[Entry, ...]
    ) -> Index | None:
        """Follower side of AppendEntries. Returns the last new index, or None on mismatch."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = Index(prev_index + len(entries))
        conflict = self._find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise InvariantViolation(f"conflict at committed index {conflict}")
            self.append(list(entries[conflict - prev_index - 1 :]))
        self.commit_to(Index(min(commit, last_new)))
        return last_new

    def _find_conflict(self, entries: tuple[Entry, ...]) -> Index:
        """First index whose entry is new or conflicts (§5.3), or 0 if all are present."""
        for e in entries:
            if self.term(e.index) != e.term:
                return e.index
        return Index(0)

    def commit_to(self, index: Index) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise InvariantViolation(f"commit {index} beyond last {self.last_index()}")
            self.committed = index

    def applied_to(self, index: Index) -> None:
        if index > self.committed or index < self.applied:
            raise InvariantViolation(f"applied {index} outside [{self.applied}, {self.committed}]")
        self.applied = index

    def stable_to(self, index: Index, term: Term) -> None:
        """Entries up to (index, term) are durable; drop them from the unstable tail."""
        if not self.unstable_entries or index < self.unstable_offset:
            return
        pos = index - self.unstable_offset
        if pos < len(self.unstable_entries) and self.unstable_entries[pos].term == term:
            del self.unstable_entries[: pos + 1]
            self.unstable_offset = Index(index + 1)

    def stable_snap_to(self, index: Index) -> None:
        if self.unstable_snapshot is not None and self.unstable_snapshot.meta.index == index:
            self.unstable_snapshot = None

    def restore(self, snap: Snapshot) -> None:
        """Replace the log by a snapshot received from the leader (§7)."""
        self.committed = snap.meta.index
        self.unstable_entries = []
        self.unstable_offset = Index(snap.meta.index + 1)
        self.unstable_snapshot = snap

    def next_committed(self, max_bytes: int) -> list[Entry]:
        """Committed entries not yet handed out for applying."""
        lo = Index(max(self.applied + 1, self.first_index()))
        if self.committed < lo:
            return []
        return self.slice(lo, Index(self.committed + 1), max_bytes)
