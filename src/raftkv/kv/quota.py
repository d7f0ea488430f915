"""The space quota and the `no_space` alarms: replicated, deterministic accounting (pure).

Rules:
- Usage is the LOGICAL size of the state, the same figure on every node at the same applied
  index (files, which never shrink, do not count): `live + history` where
  * a record's size is `len(key) + len(value)` in bytes (UTF-8 for text) `+ RECORD_OVERHEAD`
    (a tombstone has no value);
  * `live` is the sum over the live keys;
  * `history` is the sum over the history events at revisions ABOVE the compact revision.
    Compaction keeps at most one older event per key at or below it (for reads at exactly the
    compact revision); those are not counted, so `POST /compact` (or retention) frees what it
    promises at once, whatever the backend's lazy physical compaction has reached.
  Sessions' remembered replies and auth records are bounded on their own and not counted.
- The store keeps three things for this (`MVCCStore.space_counters` and friends): `live`,
  `written` (every event's size ever added, cumulative) and, per write revision, the
  cumulative `written` after it, so `history = written - written_through(compact_revision)`
  is two lookups, never a scan. After a snapshot install (or an LMDB store from before this
  accounting) the backends recount from the live keys and the events above the compact
  revision (`recount`), which gives exactly the same usage.
- The quota is replicated (`SetQuota`, proposed by a leader whose `storage.quota_bytes`
  differs from the state's; 0 = none), so the quota alarm is DERIVED at apply time and every
  node agrees without an extra entry: after each write, compaction or quota change, usage >=
  quota raises it; usage < CLEAR_PERCENT % of the quota clears it (hysteresis: no flapping).
- A member whose disk is nearly full raises its own alarm with an `Alarm` entry (the free
  space of one disk is node-local: it must go through the log so the cluster agrees); a later
  `Alarm(active=False)` clears it.
- While any alarm is raised, a write that would make the live data larger (a new key, a larger
  value, a transaction whose branch does) gets `NoSpace` and changes nothing (not even a
  session's remembered replies: the retry can succeed once the alarm clears). Deletes,
  overwrites that do not grow, reads and compaction keep working.
- The alarms and the quota live in one record outside the key space (`SPACE_RECORD`, among
  the store's opaque records: no layout change, carried by snapshots).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgspec

from raftkv.kv.registry import COMMAND_SET_VERSION, CommandBase, command_kind

if TYPE_CHECKING:
    Value = str | bytes
else:
    Value = Any

RECORD_OVERHEAD: Final = 32  # per record: its revisions and version (3 x 8 bytes) and framing
CLEAR_PERCENT: Final = 90
SPACE_RECORD: Final = "space"  # name of the quota/alarm record among the store's records
NO_SPACE: Final = "no_space"
QUOTA_CAUSE: Final = "quota"
DISK_CAUSE: Final = "disk"


# -- commands (tags 24-31 are the durability block, kv/commands.py) -----------------------------


@command_kind("alarm", since=COMMAND_SET_VERSION)
class Alarm(CommandBase, frozen=True, tag=24):
    """Raise (`active`) or clear the disk `no_space` alarm of `member` (its free space is below,
    or back above, its configured margin). `free_bytes`: what it measured, for operators."""

    member: str
    active: bool
    free_bytes: int = 0


@command_kind("space_quota", since=COMMAND_SET_VERSION)
class SetQuota(CommandBase, frozen=True, tag=25):
    """Set the cluster's space quota in bytes (0: none)."""

    quota_bytes: int


SpaceCommand = Alarm | SetQuota


class NoSpace(msgspec.Struct, frozen=True, array_like=True, gc=False, tag=24):
    """A write refused while an alarm is raised (tag 24 in kv/commands.py's Result union)."""

    usage_bytes: int
    quota_bytes: int
    alarms: list[str]  # "quota", "disk:<member>"


class SpaceResult(msgspec.Struct, frozen=True, array_like=True, gc=False, tag=25):
    """The state after an `Alarm` or `SetQuota`."""

    usage_bytes: int
    quota_bytes: int
    alarms: list[str]


class SpaceRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """The replicated quota and alarms (JSON text in the store's records)."""

    quota_bytes: int = 0
    quota_alarm: bool = False
    disk: tuple[str, ...] = ()  # members whose disk alarm is raised, sorted

    @property
    def raised(self) -> bool:
        return self.quota_alarm or bool(self.disk)

    def alarms(self) -> list[str]:
        return ([QUOTA_CAUSE] if self.quota_alarm else []) + [
            f"{DISK_CAUSE}:{m}" for m in self.disk
        ]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SpaceRecord)


class SpaceStore(Protocol):
    """The part of `raftkv.kv.mvcc.MVCCStore` this module uses."""

    def compact_revision(self) -> int: ...

    def auth_get(self, name: str) -> str | None: ...

    def auth_put(self, name: str, record: str) -> None: ...

    def space_counters(self) -> tuple[int, int]:
        """(live, written) bytes."""
        ...

    def set_space_counters(self, live: int, written: int, rev: int) -> None:
        """Store both counters; `written` is also the cumulative figure as of revision `rev`."""
        ...

    def written_through(self, rev: int) -> int:
        """Cumulative `written` as of revision `rev` (0 before the first recorded one)."""
        ...


def value_bytes(value: Value) -> int:
    if isinstance(value, bytes):
        return len(value)
    return len(value) if value.isascii() else len(value.encode())


def record_bytes(key: str, value: Value | None) -> int:
    """The accounted size of a record (None: a tombstone)."""
    size = RECORD_OVERHEAD + (len(key) if key.isascii() else len(key.encode()))
    return size if value is None else size + value_bytes(value)


@functools.lru_cache(maxsize=64)
def _decode(raw: str) -> SpaceRecord:
    return _decoder.decode(raw)


_NONE: Final = SpaceRecord()


def space(store: SpaceStore) -> SpaceRecord:
    raw = store.auth_get(SPACE_RECORD)
    return _NONE if raw is None else _decode(raw)


def _set_space(store: SpaceStore, rec: SpaceRecord) -> None:
    store.auth_put(SPACE_RECORD, _encoder.encode(rec).decode())


def usage(store: SpaceStore) -> int:
    live, written = store.space_counters()
    return live + written - store.written_through(store.compact_revision())


def account(
    store: SpaceStore, live_delta: int, written_delta: int, rev: int, rec: SpaceRecord
) -> None:
    """Record one command's writes (at revision `rev`), then re-check the quota alarm; `rec` is
    the space record as the command found it (writes do not change it)."""
    live, written = store.space_counters()
    live, written = live + live_delta, written + written_delta
    store.set_space_counters(live, written, rev)
    if rec.quota_bytes > 0 or rec.quota_alarm:
        _judge(store, rec, live + written - store.written_through(store.compact_revision()))


def evaluate(store: SpaceStore, rec: SpaceRecord | None = None) -> SpaceRecord:
    """Raise or clear the quota alarm from the current usage (see the module rules)."""
    rec = space(store) if rec is None else rec
    if rec.quota_bytes <= 0 and not rec.quota_alarm:
        return rec
    return _judge(store, rec, usage(store))


def _judge(store: SpaceStore, rec: SpaceRecord, used: int) -> SpaceRecord:
    raised = rec.quota_alarm
    if rec.quota_bytes <= 0:
        raised = False
    elif not raised and used >= rec.quota_bytes:
        raised = True
    elif raised and used * 100 < rec.quota_bytes * CLEAR_PERCENT:
        raised = False
    if raised != rec.quota_alarm:
        rec = msgspec.structs.replace(rec, quota_alarm=raised)
        _set_space(store, rec)
    return rec


def apply_space(store: SpaceStore, cmd: SpaceCommand) -> SpaceResult:
    rec = space(store)
    match cmd:
        case SetQuota(quota_bytes=quota):
            rec = msgspec.structs.replace(rec, quota_bytes=max(0, quota))
        case Alarm(member=member, active=active):
            members = set(rec.disk)
            if active:
                members.add(member)
            else:
                members.discard(member)
            rec = msgspec.structs.replace(rec, disk=tuple(sorted(members)))
    _set_space(store, rec)
    rec = evaluate(store, rec)
    return SpaceResult(usage(store), rec.quota_bytes, rec.alarms())


def alarm_flags(store: SpaceStore) -> list[tuple[str, bool]]:
    """(alarm, raised) for the metrics: `no_space` whatever its cause."""
    return [(NO_SPACE, bool(space(store).alarms()))]


def space_figures(store: SpaceStore) -> tuple[int, int]:
    """(usage, quota in force) for the metrics."""
    return usage(store), space(store).quota_bytes


def refused(store: SpaceStore) -> NoSpace:
    rec = space(store)
    return NoSpace(usage(store), rec.quota_bytes, rec.alarms())


def recount(
    store: SpaceStore,
    live: Iterable[tuple[str, Value]],
    events: Iterable[tuple[int, str, Value | None]],
) -> None:
    """Rebuild the counters from the live (key, value) pairs and the history events above the
    compact revision as (rev, key, value or None), in ascending order; the caller cleared the
    per-revision figures first. Gives the usage incremental accounting gives (module rules)."""
    floor = store.compact_revision()
    live_bytes = sum(record_bytes(k, v) for k, v in live)
    written, last = 0, floor
    for rev, key, value in events:
        if rev <= floor:
            continue
        if rev != last and last != floor:
            store.set_space_counters(live_bytes, written, last)
        written += record_bytes(key, value)
        last = rev
    store.set_space_counters(live_bytes, written, last)
