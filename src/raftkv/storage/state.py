"""The state-machine contract every backend (LMDB, memory) fulfils, and their shared apply steps.

Rules:
- `apply(entries, conf=None, cluster=None)` applies a batch of committed entries atomically
  together with the new applied index/term (and `conf` plus the runtime's opaque membership
  record `cluster`, when the batch changed the configuration). Entries at or
  below the applied index are skipped (a restart replays from the durable log, and the state
  may be ahead of what the driver assumed); a gap raises `ApplyOrderError`.
- Per entry: a NORMAL entry with data is decoded (`raftkv.codec.commands`) and applied by the
  pure `raftkv.kv.machine.apply_command` at revision = the entry's index (`raftkv.kv.mvcc`);
  an empty NORMAL entry (a leader's no-op, §5.4.2) and a
  CONF_CHANGE entry only advance the applied index. Their result, and that of a skipped entry,
  is None. An undecodable command raises `UndecodableEntryError` naming the entry's index (and
  the tag of an unknown kind): every node holds the same entry, so skipping it would hide a
  version mismatch; the node must stop.
- Snapshots: `build_snapshot` reads one consistent image (index, term, conf and data all from
  the same instant) and may run on a worker thread while the loop thread keeps applying;
  `install_snapshot` verifies the file while replacing the whole state and is durable on
  return. The caller must not `apply` while an install runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from raftkv.codec.commands import CommandDecodeError, UnknownCommandKind, decode_command
from raftkv.kv.commands import KeyValue, Result
from raftkv.kv.machine import apply_command
from raftkv.kv.mvcc import MVCCStore
from raftkv.raft.types import ConfState, Entry, EntryKind, Index, Term
from raftkv.storage.errors import ApplyOrderError, UndecodableEntryError
from raftkv.storage.snapshot_file import SnapshotInfo

ApplyResult = Result | None  # None: no-op, conf change, or an entry applied before

T = TypeVar("T")

__all__ = [
    "ApplyResult",
    "SnapshotInfo",
    "StateMachine",
    "apply_entry",
    "display_value",
    "first_new",
]


class StateMachine(Protocol):
    """What the driver needs from a state backend (`LmdbState`, `MemoryState`)."""

    @property
    def applied_index(self) -> Index: ...

    @property
    def applied_term(self) -> Term: ...

    @property
    def conf(self) -> ConfState: ...

    @property
    def cluster(self) -> bytes:
        """The membership record (opaque; stored with `conf`, carried in snapshots)."""
        ...

    def apply(
        self,
        entries: Sequence[Entry],
        conf: ConfState | None = None,
        cluster: bytes | None = None,
    ) -> list[ApplyResult]: ...

    def set_conf(self, conf: ConfState, cluster: bytes | None = None) -> None: ...

    def sync(self) -> None: ...

    def get(self, key: str) -> KeyValue | None: ...

    def read(self, fn: Callable[[MVCCStore], T]) -> T:
        """`fn` over one consistent instant of the state (read only)."""
        ...

    def items(
        self, prefix: str = "", limit: int | None = None, after: str | None = None
    ) -> Iterator[tuple[str, str]]: ...

    def build_snapshot(self, dest: Path) -> SnapshotInfo: ...

    def install_snapshot(self, src: Path) -> SnapshotInfo: ...

    def close(self) -> None: ...


def first_new(applied: Index, entries: Sequence[Entry], where: str) -> int:
    """Position in `entries` of the first entry above `applied`, after checking that the batch
    is contiguous and continues the applied index without a gap."""
    start = 0
    while start < len(entries) and entries[start].index <= applied:
        start += 1
    expect = applied + 1
    for entry in entries[start:]:
        if entry.index != expect:
            raise ApplyOrderError(
                f"{where}: applying entry {entry.index} but the next to apply is {expect}"
            )
        expect += 1
    return start


def apply_entry(store: MVCCStore, entry: Entry) -> ApplyResult:
    """Apply one committed entry to `store` (see the module rules)."""
    if entry.kind == EntryKind.NORMAL and entry.data:
        try:
            cmd = decode_command(entry.data)
        except UnknownCommandKind as exc:
            raise UndecodableEntryError(entry.index, exc.tag, str(exc)) from exc
        except CommandDecodeError as exc:
            raise UndecodableEntryError(entry.index, None, str(exc)) from exc
        return apply_command(store, cmd, int(entry.index))
    return None


def display_value(kv: KeyValue) -> str:
    """A value as text for operator views (binary values with escapes)."""
    return kv.value if isinstance(kv.value, str) else kv.value.decode("utf-8", "backslashreplace")
