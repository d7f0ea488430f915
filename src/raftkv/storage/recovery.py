"""What a node checks and repairs in its data directory before it serves (startup recovery).

Layout of a node directory: `raft.db` (the durable Raft log, raftlog.py), `state/` (LMDB,
state_lmdb.py), `snapshots/snap-<term>-<index>.snap`, `incoming/` (snapshots being received),
`state.boot` (the boot id the state was last opened under), `state.clean` (clean-shutdown
marker).

Rules:
- Directories are created durably (the parent fsynced after each mkdir). `incoming/` is emptied
  and `snapshots/*.tmp` removed at every start: nothing in them is referenced by the log.
- The state machine runs LMDB without fsync (NOSYNC: no fsync on the reply path). A process
  crash keeps the page cache, so LMDB is intact; an OS crash or power loss may leave it
  CORRUPT (LMDB's docs: NOSYNC is unsafe without ordered writeback). So: at open we record the
  boot id (`/proc/sys/kernel/random/boot_id`) and remove the clean marker; a clean stop syncs
  LMDB and writes the marker. At the next start, state opened under another boot id and not
  cleanly closed is discarded and rebuilt from the last snapshot file plus the durable log
  (Raft re-applies the committed entries after the snapshot) before the node serves.
- The log and the state must agree, checked at every start (`reconcile`): the state's applied
  (index, term) must be the log's snapshot point or an entry the log holds with that term. If
  not, a snapshot install was interrupted between the state and the log (the install order is:
  file into snapshots/, state, then the log record): the snapshot file for exactly that
  (term, index) is verified and recorded in the log, which drops the divergent tail (§7). With
  no such file the node refuses to start: its log lost entries its state applied (e.g. a
  damaged or replaced raft.db), and serving would fork it from the cluster.
- Every refusal raises `RecoveryError` (a StorageError: `raftkv serve` exits 3 with it and
  says what is safe to do).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import structlog

from raftkv.raft.types import Index, SnapshotMeta, Term
from raftkv.storage.errors import CorruptSnapshotError, StorageError
from raftkv.storage.fsutil import fsync_dir
from raftkv.storage.raftlog import DurableLog, LoadedLog
from raftkv.storage.snapshot_file import verify_snapshot_file
from raftkv.storage.state_lmdb import LmdbState

log = structlog.get_logger("raftkv.storage")

BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
BOOT_ID_ENV = "RAFTKV_BOOT_ID_FILE"  # tests point this at a file they control
_BOOT = "state.boot"
_CLEAN = "state.clean"


class RecoveryError(StorageError):
    """The data directory is inconsistent in a way the node cannot repair by itself."""


def snapshot_path(data_dir: Path, term: Term, index: Index) -> Path:
    return data_dir / "snapshots" / f"snap-{term:016d}-{index:016d}.snap"


def current_boot_id() -> str:
    path = os.environ.get(BOOT_ID_ENV) or BOOT_ID_FILE
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""  # not Linux: every unclean start is then treated as an OS restart


def make_dir(path: Path) -> None:
    """mkdir -p, fsyncing the parent of every directory created (its entry must survive)."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_dir(d.parent)


def prepare_dirs(data_dir: Path) -> None:
    """Create the node's directories durably; drop leftovers no log record points to."""
    make_dir(data_dir / "snapshots")
    make_dir(data_dir / "incoming")
    removed = 0
    for leftover in [*(data_dir / "incoming").iterdir(), *(data_dir / "snapshots").glob("*.tmp")]:
        if leftover.is_file():
            leftover.unlink()
            removed += 1
    if removed:
        fsync_dir(data_dir / "incoming")
        fsync_dir(data_dir / "snapshots")
        log.info("removed leftover snapshot files", count=removed)


def _write_durably(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".new")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def open_state(data_dir: Path, boot_id: str | None = None) -> LmdbState:
    """Open the state machine, first discarding it if an OS restart may have corrupted it."""
    boot = current_boot_id() if boot_id is None else boot_id
    make_dir(data_dir)
    state_dir = data_dir / "state"
    clean = (data_dir / _CLEAN).exists()
    try:
        recorded = (data_dir / _BOOT).read_text().strip()
    except FileNotFoundError:
        recorded = None
    if state_dir.exists() and not clean and (recorded is None or recorded != boot or not boot):
        log.warning(
            "state machine not closed cleanly before an OS restart (or unknown boot): "
            "rebuilding it from the last snapshot and the durable log",
            state=str(state_dir),
            recorded_boot=recorded,
            boot=boot,
        )
        shutil.rmtree(state_dir)
        fsync_dir(data_dir)
    _write_durably(data_dir / _BOOT, boot + "\n")
    if clean:
        # From here on LMDB changes without fsync: the marker must be gone first.
        (data_dir / _CLEAN).unlink()
        fsync_dir(data_dir)
    make_dir(state_dir)
    return LmdbState.open(state_dir)


def mark_clean(data_dir: Path) -> None:
    """After `sm.sync()` and close at a clean stop: the state on disk is complete."""
    _write_durably(data_dir / _CLEAN, "clean\n")


def _verified_snapshot(path: Path) -> SnapshotMeta:
    h = verify_snapshot_file(path)
    return SnapshotMeta(h.index, h.term, h.conf)


def reconcile(data_dir: Path, durable: DurableLog, loaded: LoadedLog, sm: LmdbState) -> LoadedLog:
    """Make the state machine and the log agree (see the module rules); returns the log to
    start from (re-read if it had to record a snapshot)."""
    snap = loaded.snapshot
    if snap is not None and sm.applied_index < snap.index:
        # The state is behind the log's snapshot (rebuilt, or lost): install the snapshot file.
        path = snapshot_path(data_dir, snap.term, snap.index)
        if not path.exists():
            raise RecoveryError(
                f"the raft log {durable.path} starts after snapshot {snap.index} (term "
                f"{snap.term}), but its file {path} is missing and the state machine "
                f"{sm.path} has applied only up to {sm.applied_index}"
            )
        sm.install_snapshot(path)
        log.info("state machine restored from snapshot", index=snap.index, path=str(path))
    index, term = sm.applied_index, sm.applied_term
    first = snap.index if snap is not None else Index(0)
    last = loaded.entries[-1].index if loaded.entries else first
    if index == 0 or _log_holds(loaded, index, term):
        return loaded
    # The log does not hold what the state applied: an interrupted snapshot install?
    path = snapshot_path(data_dir, term, index)
    if path.exists():
        try:
            meta = _verified_snapshot(path)
        except CorruptSnapshotError as exc:
            raise RecoveryError(
                f"{exc} (needed to finish an interrupted snapshot install)"
            ) from exc
        if (meta.index, meta.term) == (index, term):
            durable.save(None, (), meta)
            log.warning(
                "finished an interrupted snapshot install: recorded the snapshot in the log",
                index=index,
                term=term,
            )
            return durable.load()
    if index > last:
        where = f"ends at index {last}"
    else:
        held = next((e.term for e in loaded.entries if e.index == index), snap.term if snap else 0)
        where = f"holds term {held} at index {index}"
    raise RecoveryError(
        f"the state machine {sm.path} has applied index {index} (term {term}), but the raft log "
        f"{durable.path} {where} and no snapshot file covers it: the log lost entries the "
        "state machine applied (a damaged or replaced raft.db?); serving would diverge"
    )


def _log_holds(loaded: LoadedLog, index: Index, term: Term) -> bool:
    snap = loaded.snapshot
    if snap is not None and snap.index == index:
        return snap.term == term
    if snap is not None and index < snap.index:
        return True  # covered by the snapshot: the entries were compacted after it
    entries = loaded.entries
    if not entries or index < entries[0].index or index > entries[-1].index:
        return False
    return entries[index - entries[0].index].term == term
