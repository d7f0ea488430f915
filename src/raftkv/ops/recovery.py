"""Offline rewrites of a node's data directory: seed one from a backup, or force a new cluster.

Both run with the node STOPPED, on its directory (`<data root>/<node id>`: `raft.db`, `state/`,
`snapshots/`), and leave what a node restarting from a snapshot expects: the state machine at
(index, term) with the new configuration, a snapshot file of exactly that state under
`snapshots/`, and a Raft log holding only that snapshot's record and a hard state at its term.

`restore_snapshot` (disaster recovery: `raftkv snapshot restore`):
- Refuses a directory that already holds anything: restoring never overwrites a node.
- Checks the file fully (frame CRCs, trailer, `FILE.sha256` when present) while installing it.
- The configuration becomes the `--initial-cluster` voters (ids), whatever the old cluster was;
  every member of the new cluster is restored from the SAME file, so all start from the same
  (index, term) and agree on the log's prefix (Log Matching, §5.3).

`force_new_cluster` (quorum loss: `raftkv serve --force-new-cluster`):
- Every entry in the surviving log is applied, committed or not, as etcd does: the commit index
  is saved lazily, so "not known committed here" may still mean committed and acknowledged
  elsewhere; an entry that was never committed was never acknowledged, and keeping it is a
  legal outcome for a write whose client saw no answer.
- The configuration becomes this node alone; the node then elects itself and serves. The other
  old members must not come back with their old data (wipe them and add them as new members).
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import structlog

from raftkv.ops.backup import BackupError, check_sidecar, read_facts
from raftkv.raft.types import ConfState, HardState, Index, NodeId, SnapshotMeta, Term
from raftkv.runtime.driver import snapshot_path
from raftkv.storage import recovery as startup
from raftkv.storage.format import open_data_dir
from raftkv.storage.raftlog import DurableLog
from raftkv.storage.state_lmdb import LmdbState

log = structlog.get_logger("raftkv.ops")


class RecoveryError(Exception):
    """The data directory cannot be rewritten as asked; the message says why. `misuse`: the
    request itself is wrong (flags, a directory in use), as opposed to a bad file or log."""

    def __init__(self, message: str, *, misuse: bool = False) -> None:
        super().__init__(message)
        self.misuse = misuse


@dataclass(frozen=True, slots=True)
class Rewritten:
    node_dir: Path
    index: int
    term: int
    voters: tuple[str, ...]
    entries_applied: int = 0  # force_new_cluster: log entries applied on top of the snapshot
    beyond_commit: int = 0  # of those, how many were past the persisted commit index


def parse_initial_cluster(text: str) -> dict[str, str]:
    """`id=host:port,id=host:port` -> {id: address}; the addresses are what peers dial."""
    out: dict[str, str] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        node_id, sep, address = item.partition("=")
        if not sep or not node_id.strip() or not address.strip():
            raise RecoveryError(f"--initial-cluster: {item!r} is not id=host:port", misuse=True)
        if node_id.strip() in out:
            raise RecoveryError(f"--initial-cluster: {node_id.strip()} appears twice", misuse=True)
        out[node_id.strip()] = address.strip()
    if not out:
        raise RecoveryError("--initial-cluster: no members", misuse=True)
    return out


def restore_snapshot(
    file: Path, data_root: Path, node_id: str, initial_cluster: dict[str, str]
) -> Rewritten:
    if node_id not in initial_cluster:
        raise RecoveryError(f"--node-id {node_id} is not in --initial-cluster", misuse=True)
    node_dir = data_root / node_id
    if node_dir.exists() and any(node_dir.iterdir()):
        raise RecoveryError(
            f"{node_dir} is not empty: restore only seeds new data directories", misuse=True
        )
    try:
        facts = read_facts(file)
        check_sidecar(file, facts.sha256)
    except BackupError as exc:
        raise RecoveryError(str(exc)) from exc
    if facts.index == 0:
        raise RecoveryError(f"{file}: the snapshot is of an empty log (index 0)")
    conf = ConfState(voters=tuple(NodeId(n) for n in sorted(initial_cluster)))
    node_dir.mkdir(parents=True, exist_ok=True)
    try:
        open_data_dir(node_dir)  # an empty directory: records the current data format first
        startup.prepare_dirs(node_dir)
        sm = startup.open_state(node_dir)
        try:
            info = sm.install_snapshot(file)
            # The old cluster's member record (its addresses) must not come along: with none
            # stored, the first start seeds it from the cluster file, as a bootstrap does
            # (runtime/member_table.py).
            sm.set_conf(conf, b"")
            index, term = Index(info.index), Term(info.term)
            _seal(node_dir, sm, HardState(term, None, index), conf)
        finally:
            sm.close()
        startup.mark_clean(node_dir)
    except BaseException:
        _remove_tree(node_dir)  # a half-seeded directory must not be mistaken for a node
        raise
    return Rewritten(node_dir, index, term, conf.voters)


def force_new_cluster(node_dir: Path, node_id: str) -> Rewritten:
    if not (node_dir / "raft.db").exists():
        raise RecoveryError(f"{node_dir} holds no Raft log: nothing to recover", misuse=True)
    conf = ConfState(voters=(NodeId(node_id),))
    open_data_dir(node_dir)  # refuse a newer format, migrate an older one, before rewriting
    # The node's own startup recovery first (storage/recovery.py): a state an OS crash may have
    # damaged is rebuilt from the snapshot, an interrupted snapshot install is finished.
    startup.prepare_dirs(node_dir)
    durable = DurableLog.open(node_dir / "raft.db")
    try:
        loaded = durable.load()
        sm = startup.open_state(node_dir)
        try:
            loaded = startup.reconcile(node_dir, durable, loaded, sm)
            todo = [e for e in loaded.entries if e.index > sm.applied_index]
            sm.apply(todo, conf=conf)  # the new configuration in the same transaction
            index, term = sm.applied_index, sm.applied_term
            if index == 0:
                raise RecoveryError(f"{node_dir}: the log is empty, nothing to recover")
            hs = loaded.hard_state
            beyond = sum(1 for e in todo if e.index > hs.commit)
            _seal(node_dir, sm, HardState(Term(max(hs.term, term)), None, index), conf, durable)
        finally:
            sm.close()
    finally:
        durable.close()
    startup.mark_clean(node_dir)
    log.warning(
        "forced a new single-voter cluster from this node's data",
        node=node_id,
        index=index,
        term=term,
        applied_from_log=len(todo),
        past_persisted_commit=beyond,
    )
    return Rewritten(node_dir, index, term, conf.voters, len(todo), beyond)


def _seal(
    node_dir: Path,
    sm: LmdbState,
    hs: HardState,
    conf: ConfState,
    durable: DurableLog | None = None,
) -> None:
    """Snapshot the state as it now is and make the log start from that snapshot."""
    snapshots = node_dir / "snapshots"
    snapshots.mkdir(exist_ok=True)
    sm.sync()
    index, term = Index(sm.applied_index), Term(sm.applied_term)
    dest = snapshot_path(node_dir, term, index)
    sm.build_snapshot(dest)  # its header carries the new configuration (read from the state)
    own = durable if durable is not None else DurableLog.open(node_dir / "raft.db")
    try:
        own.save(hs, (), SnapshotMeta(index, term, conf))
    finally:
        if durable is None:
            own.close()
    for old in snapshots.glob("snap-*.snap"):
        if old != dest:
            old.unlink(missing_ok=True)


def _remove_tree(path: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(path)
