"""Revisions (etcd's MVCC model): the store port the apply logic writes through, and its rules.

Rules:
- The revision of a write is the Raft index of the committed entry that carries it. Every
  node applies the same entries, so every node gives a write the same revision, without a
  counter that a restart, a snapshot or an upgrade from a layout without revisions could put out
  of step. Revisions increase with every write but are not contiguous: no-ops, configuration
  changes, sessions and transactions that only read take indexes too. A transaction is one
  revision however many keys it writes (`sub` orders its writes inside that revision).
- Per key: `create_revision`, `mod_revision`, `version` (writes since creation). A delete ends
  the key's generation: the next put starts again at version 1 with a new create_revision.
- `revision()` is the revision of the last write (0 before any). History is kept as events
  ordered by (revision, sub), each a put (`KeyValue`) or a delete (tombstone), so a watch can
  resume from any uncompacted revision by scanning the events after it.
- `compact(rev)` makes reads below `rev` fail with `compacted` from then on; it may drop only
  events that no read at or above `rev` can see (an event superseded by a later event at or
  below `rev`, or a tombstone that is the key's last event below `rev`). Backends may drop
  them lazily; what a read answers never depends on how far that got.
- Space accounting (`raftkv.kv.quota`): the store keeps two counters and, per write revision,
  the cumulative `written` figure; they change only through `set_space_counters`, in the same
  atomic batch as the writes they account for.
- `MVCCStore` is the port: `raftkv.kv.machine` (pure) states what commands do through it; the
  LMDB backend and `DictState` (here: plain dicts, for the simulator and tests) implement it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Protocol

from raftkv.kv.commands import KeyValue, Result
from raftkv.kv.quota import recount


class MVCCStore(Protocol):
    """What the apply logic needs from a backend inside one atomic batch (and reads use)."""

    def revision(self) -> int: ...

    def compact_revision(self) -> int: ...

    def get(self, key: str) -> KeyValue | None:
        """The key's current value, or None if absent."""
        ...

    def get_at(self, key: str, rev: int) -> KeyValue | None:
        """The key as of revision `rev` (compact_revision <= rev <= revision())."""
        ...

    def range(
        self, start: str, end: str | None, prefix: str, rev: int | None, after: str | None
    ) -> Iterator[KeyValue]:
        """Keys k with start <= k (< end, unless None), starting with `prefix` and > `after`
        (unless None), in key order, as of `rev` (None: current)."""
        ...

    def put(self, kv: KeyValue, sub: int) -> None:
        """Write `kv` as current; history event (kv.mod_revision, sub)."""
        ...

    def delete(self, key: str, rev: int, sub: int) -> None:
        """Remove the (present) key; history tombstone at (rev, sub)."""
        ...

    def set_revision(self, rev: int) -> None: ...

    def compact(self, rev: int) -> None:
        """Raise compact_revision to `rev` (<= revision())."""
        ...

    # Sessions (raftkv.kv.sessions): opaque records and remembered replies.
    def clock_ms(self) -> int: ...

    def set_clock_ms(self, ms: int) -> None: ...

    def session(self, sid: int) -> tuple[int, int, int] | None:
        """(ttl_ms, last_used_ms, floor) of session `sid`, or None."""
        ...

    def put_session(self, sid: int, ttl_ms: int, last_ms: int, floor: int) -> None: ...

    def drop_session(self, sid: int) -> None:
        """Forget the session and every reply it remembers."""
        ...

    def session_ids(self) -> list[int]: ...

    def reply(self, sid: int, seq: int) -> Result | None: ...

    def put_reply(self, sid: int, seq: int, result: Result) -> None: ...

    def reply_seqs(self, sid: int) -> list[int]:
        """The remembered sequence numbers of `sid`, ascending."""
        ...

    def drop_reply(self, sid: int, seq: int) -> None: ...

    # Space accounting (raftkv.kv.quota).
    def space_counters(self) -> tuple[int, int]:
        """(live, written) accounted bytes."""
        ...

    def set_space_counters(self, live: int, written: int, rev: int) -> None:
        """Store both; `written` is also the cumulative figure as of revision `rev` (>= every
        revision recorded before)."""
        ...

    def written_through(self, rev: int) -> int:
        """The cumulative `written` as of the last recorded revision <= `rev` (else 0)."""
        ...

    # Auth (raftkv.kv.auth): opaque text records by name, outside the key space (no revision,
    # no history, never in a range): users, roles, the token-signing key; also the space quota
    # and alarms record (raftkv.kv.quota.SPACE_RECORD).
    def auth_get(self, name: str) -> str | None: ...

    def auth_put(self, name: str, record: str) -> None: ...

    def auth_delete(self, name: str) -> None: ...

    def auth_items(self, prefix: str) -> list[tuple[str, str]]:
        """(name, record) pairs whose name starts with `prefix`, in name order."""
        ...


def in_range(key: str, start: str, end: str | None, prefix: str, after: str | None) -> bool:
    return (
        key >= start
        and (end is None or key < end)
        and key.startswith(prefix)
        and (after is None or key > after)
    )


# One history event: (key, the KeyValue written, or None for a tombstone).
Event = tuple[str, KeyValue | None]


class DictState:
    """An `MVCCStore` in plain dicts: the simulator's and tests' state. Deterministic; the key
    order is code-point order (= UTF-8 byte order, LMDB's)."""

    __slots__ = (
        "_auth",
        "_clock",
        "_compact",
        "_current",
        "_events",
        "_keys",
        "_live",
        "_marks",
        "_replies",
        "_rev",
        "_sessions",
        "_written",
    )

    def __init__(self) -> None:
        self._current: dict[str, KeyValue] = {}
        self._keys: dict[str, list[tuple[int, int]]] = {}  # key -> its event ids, ascending
        self._events: dict[tuple[int, int], Event] = {}  # (rev, sub) -> event, ascending
        self._rev = 0  # revision of the last write
        self._compact = 0  # reads below this revision are refused; <= _rev
        self._clock = 0  # largest leader time seen in a command (ms)
        self._sessions: dict[int, tuple[int, int, int]] = {}
        self._replies: dict[int, dict[int, Result]] = {}
        self._auth: dict[str, str] = {}
        self._live = 0  # accounted bytes of the live keys (kv/quota.py)
        self._written = 0  # accounted bytes of every history event added
        self._marks: list[tuple[int, int]] = []  # (rev, cumulative written), ascending

    # -- meta ---------------------------------------------------------------------------------
    def revision(self) -> int:
        return self._rev

    def set_revision(self, rev: int) -> None:
        self._rev = rev

    def compact_revision(self) -> int:
        return self._compact

    def clock_ms(self) -> int:
        return self._clock

    def set_clock_ms(self, ms: int) -> None:
        self._clock = ms

    # -- reads --------------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        return self._current.get(key)

    def get_at(self, key: str, rev: int) -> KeyValue | None:
        ids = self._keys.get(key)
        if not ids:
            return None
        pos = bisect.bisect_right(ids, (rev, 1 << 62))
        if pos == 0:
            return None
        return self._events[ids[pos - 1]][1]

    def range(
        self, start: str, end: str | None, prefix: str, rev: int | None, after: str | None
    ) -> Iterator[KeyValue]:
        source = self._current if rev is None else self._keys
        for key in sorted(k for k in source if in_range(k, start, end, prefix, after)):
            kv = self._current[key] if rev is None else self.get_at(key, rev)
            if kv is not None:
                yield kv

    def __len__(self) -> int:
        return len(self._current)

    def items(self, prefix: str = "") -> Iterator[tuple[str, KeyValue]]:
        """(key, current KeyValue) pairs whose key starts with `prefix`, in key order."""
        for kv in self.range(prefix, None, prefix, None, None):
            yield kv.key, kv

    def events(self) -> Iterator[tuple[int, int, Event]]:
        """Every kept history event as (rev, sub, event), ascending."""
        for (rev, sub), event in self._events.items():
            yield rev, sub, event

    # -- writes -------------------------------------------------------------------------------
    def put(self, kv: KeyValue, sub: int) -> None:
        self._current[kv.key] = kv
        self._add_event(kv.mod_revision, sub, (kv.key, kv))

    def delete(self, key: str, rev: int, sub: int) -> None:
        del self._current[key]
        self._add_event(rev, sub, (key, None))

    def _add_event(self, rev: int, sub: int, event: Event) -> None:
        self._events[(rev, sub)] = event
        self._keys.setdefault(event[0], []).append((rev, sub))

    def load_event(self, rev: int, sub: int, key: str, kv: KeyValue | None) -> None:
        """Restore one history event (snapshot install: events arrive in ascending order)."""
        self._add_event(rev, sub, (key, kv))
        if kv is None:
            self._current.pop(key, None)
        else:
            self._current[key] = kv

    def compact(self, rev: int) -> None:
        self._compact = max(self._compact, rev)
        # Eager here (the simulator's stores are small); LMDB drops events in bounded steps.
        for key in [k for k, ids in self._keys.items() if ids[0][0] < rev]:
            ids = self._keys[key]
            keep = bisect.bisect_right(ids, (rev, 1 << 62)) - 1  # last event at or below rev
            cut = keep
            if self._events[ids[keep]][1] is None and ids[keep][0] < rev:
                cut = keep + 1  # a tombstone no read at or above rev can see
            for eid in ids[:cut]:
                del self._events[eid]
            del ids[:cut]
            if not ids:
                del self._keys[key]

    # -- space accounting -------------------------------------------------------------------
    def space_counters(self) -> tuple[int, int]:
        return self._live, self._written

    def set_space_counters(self, live: int, written: int, rev: int) -> None:
        self._live, self._written = live, written
        if self._marks and self._marks[-1][0] == rev:
            self._marks[-1] = (rev, written)
        else:
            self._marks.append((rev, written))

    def written_through(self, rev: int) -> int:
        pos = bisect.bisect_right(self._marks, (rev, 1 << 62))
        return self._marks[pos - 1][1] if pos else 0

    def recount_space(self) -> None:
        """Rebuild the accounting from the state (after a snapshot install)."""
        self._live, self._written, self._marks = 0, 0, []
        recount(
            self,
            ((k, kv.value) for k, kv in self.items()),
            ((rev, key, None if kv is None else kv.value) for rev, _, (key, kv) in self.events()),
        )

    # -- sessions -----------------------------------------------------------------------------
    def session(self, sid: int) -> tuple[int, int, int] | None:
        return self._sessions.get(sid)

    def put_session(self, sid: int, ttl_ms: int, last_ms: int, floor: int) -> None:
        self._sessions[sid] = (ttl_ms, last_ms, floor)

    def drop_session(self, sid: int) -> None:
        self._sessions.pop(sid, None)
        self._replies.pop(sid, None)

    def session_ids(self) -> list[int]:
        return sorted(self._sessions)

    def reply(self, sid: int, seq: int) -> Result | None:
        return self._replies.get(sid, {}).get(seq)

    def put_reply(self, sid: int, seq: int, result: Result) -> None:
        self._replies.setdefault(sid, {})[seq] = result

    def reply_seqs(self, sid: int) -> list[int]:
        return sorted(self._replies.get(sid, {}))

    def drop_reply(self, sid: int, seq: int) -> None:
        self._replies.get(sid, {}).pop(seq, None)

    def auth_get(self, name: str) -> str | None:
        return self._auth.get(name)

    def auth_put(self, name: str, record: str) -> None:
        self._auth[name] = record

    def auth_delete(self, name: str) -> None:
        self._auth.pop(name, None)

    def auth_items(self, prefix: str) -> list[tuple[str, str]]:
        return [(k, self._auth[k]) for k in sorted(self._auth) if k.startswith(prefix)]

    # -- whole-state helpers (tests, simulator snapshots) ---------------------------------------
    def copy(self) -> DictState:
        out = DictState()
        out._current = dict(self._current)
        out._keys = {k: list(v) for k, v in self._keys.items()}
        out._events = dict(self._events)
        out._rev, out._compact, out._clock = self._rev, self._compact, self._clock
        out._sessions = dict(self._sessions)
        out._replies = {s: dict(r) for s, r in self._replies.items()}
        out._auth = dict(self._auth)
        out._live, out._written, out._marks = self._live, self._written, list(self._marks)
        return out

    def replies(self) -> Iterator[tuple[int, int, Result]]:
        for sid in sorted(self._replies):
            for seq in sorted(self._replies[sid]):
                yield sid, seq, self._replies[sid][seq]
