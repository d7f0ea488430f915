"""Raft's safety properties, checked incrementally after every simulated event.

Checked (Raft paper §5.2-5.4, Figure 3), each as cheaply as the event allows:
- Election Safety: at most one leader per term (`leaders`, every observed leader).
- Log Matching: a global map (index, term) -> (kind, data, term at index-1) that every entry any
  node persists must agree with; by induction two logs agreeing on (index, term) agree on the
  whole prefix.
- State Machine Safety: every applied entry must equal the one any other node applied at that
  index (`committed`), entries apply strictly in order, and the digest chain at an index (which
  covers restores from snapshots) is the same on every node (`digests`), and so are the
  space figures derived from the state (`spaces`: usage, quota, alarms; kv/quota.py).
- Leader Completeness: a term-T leader's log (storage + its first Ready's entries) holds every
  entry committed in a term before T (known from any node's commit index while in such a
  term), unless compacted into its snapshot.
- Commit safety (§5.4.3, checked when a leader's commit advances): a quorum of voters holds
  the entry *durably* and each would refuse any candidate lacking it — so no crash or
  election can undo the commit. This sees Figure 8 and early acks at the moment they happen.
- Read safety (§6.4): a ReadIndex result is at least the highest commit index any node had
  when the read was handed to the core.
- Durability of votes and terms: a term never decreases; a vote, once durable for a term,
  never changes within it; writes that change term, vote or entries are fsynced (`must_sync`).
- Per incarnation: commit never decreases and applied <= commit.
The checker only records `Violation`s; the cluster decides to stop.
"""

from __future__ import annotations

from dataclasses import dataclass

from raftkv.raft.errors import Compacted, Unavailable
from raftkv.raft.ready import Persist, Ready
from raftkv.raft.storage import MemoryStorage
from raftkv.raft.types import Entry, EntryKind, HardState, Index, NodeId, Role, Snapshot, Term

LogPos = tuple[int, int]  # (last term, last index): compared as §5.4.1 compares logs


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str  # a stable snake_case name, e.g. "two_leaders"
    time: int
    event: int  # number of the event after which it was found
    detail: str


@dataclass(slots=True)
class _NodeWatch:
    epoch: int = -1
    commit: int = 0  # highest commit seen in this incarnation
    durable_term: int = 0  # highest term persisted (survives crashes)


class Invariants:
    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.now = 0  # set by the cluster before each event
        self.event = 0
        self.leaders: dict[Term, NodeId] = {}  # term -> the one leader seen in it
        self.log: dict[tuple[int, int], tuple[int, bytes, int]] = {}  # (i, t) -> kind, data, prev
        self.committed: dict[int, Entry] = {}  # index -> the entry applied there (by anyone)
        self.max_committed = 0  # highest index in `committed`
        self.digests: dict[int, bytes] = {}  # index -> digest chain value after applying it
        # index -> the state's space figures after applying it (kv/quota.py): usage, quota and
        # alarms are derived state, so a snapshot restore that recounts them wrongly shows here
        self.spaces: dict[int, tuple[int, object]] = {}
        self.votes: dict[tuple[NodeId, int], NodeId] = {}  # (node, term) -> durable vote
        self._watch: dict[NodeId, _NodeWatch] = {}
        self.commit_by_term: dict[int, int] = {}  # term -> highest commit any node had in it
        self._new_leaders: dict[NodeId, int] = {}  # node -> term it leads, log not yet checked

    def fail(self, kind: str, detail: str) -> None:
        self.violations.append(Violation(kind, self.now, self.event, detail))

    def _w(self, node: NodeId) -> _NodeWatch:
        w = self._watch.get(node)
        if w is None:
            w = self._watch[node] = _NodeWatch()
        return w

    # -- after every event --------------------------------------------------------------------
    def observe(
        self, node: NodeId, epoch: int, role: Role, term: int, commit: int, applied: int
    ) -> None:
        w = self._w(node)
        if w.epoch != epoch:
            w.epoch, w.commit = epoch, commit
        if commit < w.commit:
            self.fail("commit_regressed", f"{node}: commit {w.commit} -> {commit}")
        w.commit = commit
        if applied > commit:
            self.fail("applied_beyond_commit", f"{node}: applied {applied} > commit {commit}")
        if commit > self.commit_by_term.get(term, 0):
            self.commit_by_term[term] = commit
        if role is Role.LEADER:
            other = self.leaders.get(Term(term))
            if other is None:
                self.leaders[Term(term)] = node
                self._new_leaders[node] = term
            elif other != node:
                self.fail("two_leaders", f"term {term}: {other} and {node} both lead")

    @property
    def max_commit(self) -> int:
        """The highest commit index any node has had so far."""
        return max(self.commit_by_term.values(), default=0)

    def check_commit_safe(
        self,
        leader: NodeId,
        index: int,
        term: int,
        durable: dict[NodeId, LogPos],
        full: dict[NodeId, tuple[bool, LogPos]],
    ) -> None:
        """§5.4.3's argument, checked at the moment of commit: the entry (index, term) must be
        durable on a quorum of voters that would all refuse any candidate lacking it.

        `durable`: each voter's durable log end (what survives any crash); `full`: each voter
        as a candidate — whether its log (volatile tail included) holds the entry, and its end.
        A voter grants a candidate whose log end is at least its own (§5.4.1).
        """
        quorum = len(durable) // 2 + 1
        for cand in sorted(full):
            has, pos = full[cand]
            if has:
                continue
            grants = [v for v in sorted(durable) if v == cand or pos >= durable[v]]
            if len(grants) >= quorum:
                self.fail(
                    "commit_unsafe",
                    f"{leader} committed {index} (term {term}) but {cand} (log end term "
                    f"{pos[0]} index {pos[1]}) lacks it and could win with votes of {grants}",
                )
                return

    def forget_incarnation(self, node: NodeId) -> None:
        self._new_leaders.pop(node, None)

    # -- Ready / persist hooks ----------------------------------------------------------------
    def on_take_ready(
        self, node: NodeId, storage: MemoryStorage, applied: int, ready: Ready
    ) -> None:
        snap = ready.snapshot
        if snap is not None and snap.meta.index <= applied:
            self.fail(
                "stale_snapshot", f"{node}: snapshot at {snap.meta.index} with applied {applied}"
            )
        term = self._new_leaders.pop(node, None)
        if term is not None:
            # Entries committed in earlier terms (a node in term t < T knew them committed)
            # must all be in the log of term T's leader; later commits need not be.
            known = max((c for t, c in self.commit_by_term.items() if t < term), default=0)
            self._leader_completeness(node, term, known, storage, ready)

    def _leader_completeness(
        self, node: NodeId, term: int, known: int, storage: MemoryStorage, ready: Ready
    ) -> None:
        base = storage.snapshot().meta.index
        if ready.snapshot is not None:
            base = max(base, ready.snapshot.meta.index)
        fresh = {e.index: e.term for e in ready.entries}
        start = ready.entries[0].index if ready.entries else storage.last_index() + 1
        for i in sorted(self.committed):
            if i <= base or i > known:
                continue
            want = self.committed[i].term
            if i >= start:
                have = fresh.get(Index(i))
            else:
                try:
                    have = storage.term(Index(i))
                except (Compacted, Unavailable):
                    have = None
            if have != want:
                self.fail(
                    "leader_incomplete",
                    f"{node} leads term {term} without committed entry {i} (term {want}); "
                    f"has term {have}",
                )
                return

    def on_persist(self, node: NodeId, storage: MemoryStorage, op: Persist) -> None:
        """Called with the node's storage *before* the write is applied to it."""
        old = storage.hard_state
        hs = op.hard_state
        changes_vote = hs is not None and (hs.term != old.term or hs.vote != old.vote)
        if (op.entries or changes_vote or op.snapshot is not None) and not op.sync:
            self.fail("unsynced_write", f"{node}: term/vote/entries written without fsync")
        if hs is not None:
            self._check_hard_state(node, hs, op.sync)
        if op.entries:
            self._check_entries(node, storage, op)

    def _check_hard_state(self, node: NodeId, hs: HardState, synced: bool) -> None:
        w = self._w(node)
        if hs.term < w.durable_term:
            self.fail("term_regressed", f"{node}: term {w.durable_term} -> {hs.term}")
        if not synced:
            return
        w.durable_term = max(w.durable_term, hs.term)
        if hs.vote is not None:
            key = (node, int(hs.term))
            prev = self.votes.get(key)
            if prev is None:
                self.votes[key] = hs.vote
            elif prev != hs.vote:
                self.fail("double_vote", f"{node} voted {prev} then {hs.vote} in term {hs.term}")

    def _check_entries(self, node: NodeId, storage: MemoryStorage, op: Persist) -> None:
        first = op.entries[0]
        prev_term: int | None
        if op.snapshot is not None and op.snapshot.meta.index == first.index - 1:
            prev_term = op.snapshot.meta.term
        else:
            try:
                prev_term = storage.term(Index(first.index - 1))
            except Compacted:
                prev_term = None  # the prefix is in a snapshot: nothing to compare with
            except Unavailable:
                self.fail("append_gap", f"{node}: append at {first.index} past its last index")
                return
        for e in op.entries:
            if prev_term is not None:
                key = (int(e.index), int(e.term))
                rec = (int(e.kind), e.data, prev_term)
                seen = self.log.setdefault(key, rec)
                if seen != rec:
                    self.fail(
                        "log_mismatch",
                        f"{node} persisted entry {e.index} term {e.term} "
                        f"(kind/prev {rec[0]}/{rec[2]}) unlike another log's "
                        f"(kind/prev {seen[0]}/{seen[2]}, same data: {seen[1] == rec[1]})",
                    )
                    return
            prev_term = e.term

    # -- apply hooks --------------------------------------------------------------------------
    def on_apply_snapshot(self, node: NodeId, snap: Snapshot, prev: int, digest: bytes) -> None:
        if snap.meta.index <= prev:
            self.fail("snapshot_regressed", f"{node}: snapshot {snap.meta.index} <= {prev}")
        self._check_digest(node, snap.meta.index, digest)

    def on_apply_entry(self, node: NodeId, e: Entry, prev: int, digest: bytes) -> None:
        if e.index != prev + 1:
            self.fail("apply_out_of_order", f"{node}: applied {e.index} after {prev}")
            return
        seen = self.committed.setdefault(int(e.index), e)
        if seen != e:
            self.fail(
                "committed_changed",
                f"{node} applied {_desc(e)} at {e.index} where another node applied {_desc(seen)}",
            )
            return
        self.max_committed = max(self.max_committed, e.index)
        self._check_digest(node, e.index, digest)

    def on_space(self, node: NodeId, index: int, figures: tuple[int, object]) -> None:
        seen = self.spaces.setdefault(index, figures)
        if seen != figures:
            self.fail(
                "space_diverged",
                f"{node}: usage/alarms at {index} are {figures}, another node had {seen}",
            )

    def _check_digest(self, node: NodeId, index: int, digest: bytes) -> None:
        seen = self.digests.setdefault(index, digest)
        if seen != digest:
            self.fail("state_diverged", f"{node}: state at {index} differs from another node's")


def _desc(e: Entry) -> str:
    kind = "conf" if e.kind == EntryKind.CONF_CHANGE else "noop" if not e.data else "cmd"
    return f"(term {e.term} {kind} {e.data[:24]!r})"
