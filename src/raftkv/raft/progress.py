"""Per-follower replication progress kept by a leader (etcd's Progress / Inflights).

States: PROBE (one append at a time until the follower's match is found), REPLICATE (optimistic
pipelining with a bounded window of in-flight appends), SNAPSHOT (waiting for a snapshot).
Invariants: match < next, except in PROBE after a follower reported losing acknowledged
entries (then next <= match until it is repaired); in REPLICATE the inflight window holds
increasing last indexes.
"""

from __future__ import annotations

import enum
from collections import deque

from raftkv.raft.types import Index


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "max_inflight",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "snapshot_elapsed",
        "state",
    )

    def __init__(self, next_index: Index, max_inflight: int, *, is_learner: bool) -> None:
        self.match: Index = Index(0)  # highest index known replicated on the follower
        self.next: Index = next_index  # next index to send; match < next
        self.state = ProgressState.PROBE
        self.probe_sent = False  # PROBE: an append is outstanding, wait for its answer
        self.pending_snapshot: Index = Index(0)  # SNAPSHOT: index of the snapshot sent
        self.snapshot_elapsed = 0  # SNAPSHOT: ticks since the snapshot was sent
        self.recent_active = True  # heard from within the last election timeout (CheckQuorum)
        self.inflights: deque[Index] = deque()  # REPLICATE: last index of each unacked append
        self.max_inflight = max_inflight
        self.is_learner = is_learner

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = Index(max(self.match + 1, self.pending_snapshot + 1))
        else:
            self.next = Index(self.match + 1)
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = Index(0)
        self.inflights.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = Index(self.match + 1)
        self.probe_sent = False
        self.inflights.clear()

    def become_snapshot(self, index: Index) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = index
        self.snapshot_elapsed = 0
        self.probe_sent = False
        self.inflights.clear()

    def maybe_update(self, index: Index) -> bool:
        """A successful append response up to `index`; False if it is stale."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        if self.next < index + 1:
            self.next = Index(index + 1)
        while self.inflights and self.inflights[0] <= index:
            self.inflights.popleft()
        return updated

    def maybe_decr_to(self, rejected: Index, match_hint: Index) -> bool:
        """A rejection of the append at prev_index `rejected`; False if it is stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # stale: that append was sent before we learned the match
            self.next = Index(self.match + 1)
            return True
        if self.next - 1 != rejected:
            return False  # stale: not the probe we are waiting for
        # Probe below `match` if the follower says so (etcd's rule): a follower whose disk lost
        # acknowledged entries is then repaired instead of being stuck forever.
        self.next = Index(max(min(rejected, match_hint + 1), 1))
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflights) >= self.max_inflight
        return True

    def sent_entries(self, last: Index, count: int) -> None:
        """Record an append carrying `count` entries up to `last`."""
        if self.state is ProgressState.REPLICATE:
            if count:
                self.next = Index(last + 1)
                self.inflights.append(last)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def free_first_inflight(self) -> None:
        """A heartbeat answer proves the link works; unblock a full window (lost append)."""
        if self.inflights:
            self.inflights.popleft()
