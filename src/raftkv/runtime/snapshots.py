"""Snapshot steps of the driver: verify a received file, install it, build and record one.

Rules (crash safety; storage/recovery.py finishes or undoes whatever a crash interrupts):
- Build: LMDB sync -> write `building.tmp` (tmp + fsync + rename + dir fsync) -> rename to
  `snap-T-I.snap` -> dir fsync -> record in the log (which compacts it, keeping
  `snapshot_keep_entries` entries behind the snapshot, durably and in memory alike) -> prune
  old files. `building.tmp` is written by the node's builder process by default
  (snapshot_process.py: the state-machine worker waits on a pipe, without the GIL, while it
  builds), or on that worker itself with `snapshot_builder: thread`; the steps around it are
  the same.
- Install of a received snapshot: verify the whole file BEFORE Raft sees the message (a corrupt
  one is discarded, the sender is told with a `SnapshotRejected` frame, and the node keeps
  running) -> move it into snapshots/ -> dir fsync -> install into LMDB (synced) -> the caller
  records it in the log.
- A sender told that its snapshot arrived corrupt re-verifies its own file (one check at a
  time, at most once per `RECHECK_INTERVAL_S` per file, since the report comes from a peer):
  intact means the copy was damaged in transit, and Raft's next probe resends it; corrupt means
  the file rotted on our disk, so a fresh snapshot is built from the state machine (same index:
  it replaces the file; a later index: it becomes the snapshot sent, and the bad file is
  deleted) instead of resending the same bad file forever.
- Any storage error in these steps stops the node (storage/failure.py): a half-done snapshot
  is never followed by a compaction.
- `testhooks.crash_point` marks each step for the crash-point tests.
- No file work on the loop thread: old snapshot files are removed on the state-machine worker
  (an unlink of a large file is tens of milliseconds of ext4 work, a stall of the loop).
- Bounded work per loop turn: the entries a compaction drops from the in-memory log (100k
  at the default `snapshot_every`) are freed `FREE_STEP` per turn, not at once (freeing them
  all took 8-16 ms of the loop thread at every snapshot, measured).
- A mixin of `RaftDriver` (driver.py), split out to keep that module small; it only uses the
  driver members declared below.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from raftkv.codec.validate import MAX_REASON_CHARS
from raftkv.codec.wire import SnapshotRejected
from raftkv.raft.messages import AnyMessage, InstallSnapshot
from raftkv.raft.types import ConfState, Index, NodeId, Snapshot, Term
from raftkv.runtime import testhooks
from raftkv.runtime.member_table import load_record
from raftkv.runtime.snapshot_process import SnapshotBuilder
from raftkv.storage.errors import CorruptSnapshotError
from raftkv.storage.fsutil import fsync_dir
from raftkv.storage.recovery import snapshot_path
from raftkv.storage.snapshot_file import SnapshotInfo, verify_snapshot_file

if TYPE_CHECKING:
    from raftkv.raft.rawnode import RawNode
    from raftkv.raft.storage import MemoryStorage
    from raftkv.runtime.members import ClusterRecord
    from raftkv.runtime.metrics import DisabledMetrics, RuntimeMetrics
    from raftkv.runtime.options import NodeOptions
    from raftkv.runtime.waiters import AppliedWaiters
    from raftkv.storage.raftlog import DurableLog
    from raftkv.storage.state_lmdb import LmdbState
    from raftkv.transport.tcp import PeerTransport

log = structlog.get_logger("raftkv.runtime")

RECHECK_INTERVAL_S = 10.0  # a peer's reports cannot make us re-read one file more often
FREE_STEP = 4096  # compacted entries freed per loop turn: ~0.4 ms of deallocation here


class SnapshotSteps:
    _builder: SnapshotBuilder | None = None  # the builder process (started with the node)

    if TYPE_CHECKING:
        opts: NodeOptions
        id: NodeId
        sm: LmdbState
        raw: RawNode
        storage: MemoryStorage
        durable: DurableLog
        metrics: RuntimeMetrics | DisabledMetrics
        _sm_worker: ThreadPoolExecutor
        _writer: ThreadPoolExecutor
        _stopping: bool
        _snapshotting: bool
        _rechecked: tuple[Path, float] | None  # the last file re-verified, and when
        _last_snapshot_index: Index
        _applied_waiters: AppliedWaiters
        _bootstrap_conf: ConfState
        _tasks: list[asyncio.Task[Any]]
        transport: PeerTransport

        def _set_members(self, record: ClusterRecord) -> None: ...

        @property
        def failed(self) -> bool: ...
        async def _io(
            self, op: str, path: Path, executor: ThreadPoolExecutor, fn: Any, *args: Any
        ) -> Any: ...
        def _die(self, exc: BaseException) -> None: ...
        def _step(self, msg: AnyMessage) -> None: ...

    async def _verify_then_step(self, msg: InstallSnapshot) -> None:
        """A corrupt received snapshot is discarded and the node keeps running: the leader
        hears nothing back, its transfer times out or it probes again, and it resends. A
        snapshot Raft does not take (stale, or we already hold its last entry) is removed from
        incoming/ at once; a taken one is moved out by `_install_snapshot`."""
        path = Path(msg.snapshot.data.decode())
        testhooks.maybe_corrupt_received(path)
        try:
            await self._io("snapshot verify", path, self._sm_worker, verify_snapshot_file, path)
        except CorruptSnapshotError as exc:
            meta = msg.snapshot.meta
            told = self.transport.report_snapshot_rejected(
                msg.from_, SnapshotRejected(meta.index, meta.term, str(exc)[:MAX_REASON_CHARS])
            )
            log.error(
                "received snapshot is corrupt: discarded, waiting for the leader to resend",
                node=self.id,
                leader=msg.from_,
                leader_told=told,
                error=str(exc),
            )
            path.unlink(missing_ok=True)
            return
        except Exception as exc:
            self._die(exc)
            return
        if self._stopping or self.failed:
            return
        self._step(msg)
        pending = self.raw.raft.log.unstable_snapshot
        if pending is None or pending.data != msg.snapshot.data:
            path.unlink(missing_ok=True)

    async def _install_snapshot(self, snap: Snapshot) -> Snapshot:
        """Install a received snapshot into the state machine; returns it with our local path."""
        src = Path(snap.data.decode())
        dest = snapshot_path(self.opts.data_dir, snap.meta.term, snap.meta.index)
        w = self._sm_worker
        # Order (recovery.py): the file is durably in snapshots/ before the state changes, so
        # a crash after the install finds it and finishes by recording it in the log.
        await self._io("rename", dest, w, os.replace, src, dest)
        await self._io("fsync (directory)", dest.parent, w, fsync_dir, dest.parent)
        testhooks.crash_point("snapshot-install:moved")
        started = time.perf_counter()
        info = await self._io("snapshot install", dest, w, self.sm.install_snapshot, dest)
        self.metrics.snapshot_done("install", time.perf_counter() - started, info.size)
        self._applied_waiters.applied(self.sm.applied_index)
        testhooks.crash_point("snapshot-install:installed")
        self._last_snapshot_index = snap.meta.index
        # The snapshot carries the membership record of its index: adopt it (reconciled).
        self._set_members(await load_record(self.sm, self.opts, self._bootstrap_conf))
        log.info("installed snapshot", node=self.id, index=snap.meta.index, term=snap.meta.term)
        return Snapshot(snap.meta, str(dest).encode())

    async def _take_snapshot(self) -> None:
        """Build a snapshot file, then record it in the log (which compacts the log). Any
        error stops the node: a half-done snapshot must never be followed by a compaction."""
        w = self._sm_worker
        try:
            # The state must be durable before the log entries behind it go.
            await self._io("fsync (LMDB sync)", self.sm.path, w, self.sm.sync)
            testhooks.crash_point("snapshot-build:synced")
            tmp = self.opts.data_dir / "snapshots" / "building.tmp"
            started = time.perf_counter()
            info = await self._build_file(tmp)
            self.metrics.snapshot_done("build", time.perf_counter() - started, info.size)
            testhooks.crash_point("snapshot-build:written")
            dest = snapshot_path(self.opts.data_dir, Term(info.term), Index(info.index))
            await self._io("rename", dest, w, tmp.rename, dest)
            await self._io("fsync (directory)", dest.parent, w, fsync_dir, dest.parent)
            testhooks.crash_point("snapshot-build:renamed")
            if info.index <= self.storage.snapshot().meta.index:
                return
            snap = self.storage.create_snapshot(Index(info.index), info.conf, str(dest).encode())
            await self._io(
                "log commit",
                self.durable.path,
                self._writer,
                self.durable.save,
                None,
                (),
                snap.meta,
                self.opts.snapshot_keep_entries,  # the same entries stay as in memory below
            )
            testhooks.crash_point("snapshot-build:recorded")
            keep_from = Index(info.index - self.opts.snapshot_keep_entries)
            if keep_from > self.storage.first_index():
                self._free_in_steps(self.storage.compact(keep_from))
            self._last_snapshot_index = Index(info.index)
            # On the worker, not the loop: unlinking a 100+ MB file took 27 ms on a quiet disk
            # and stalled the loop past two ticks under load (issue 12's leader changes).
            snapshots = self.opts.data_dir / "snapshots"
            await self._io("snapshot prune", snapshots, w, self._prune_snapshots, 2)
            log.info("snapshot taken", node=self.id, index=info.index, bytes=info.size)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._die(exc)
        finally:
            self._snapshotting = False

    def _start_builder(self) -> None:
        """Start the builder process now, in the background on the state-machine worker
        (snapshot_process.py), so the first snapshot does not wait for a Python start."""
        if self.opts.snapshot_builder == "process" and self._builder is None:
            self._builder = SnapshotBuilder(self.sm.path)
            self._sm_worker.submit(self._builder.prestart)

    async def _build_file(self, tmp: Path) -> SnapshotInfo:
        """The snapshot file, built by the builder process (`opts.snapshot_builder`
        "process": off this process's GIL, snapshot_process.py) or on the state-machine
        worker thread ("thread"). Either way on that worker, and a failure is a
        StorageFailure."""
        if self._builder is None:
            build = self.sm.build_snapshot
        else:
            build = self._builder.build
        info: SnapshotInfo = await self._io("snapshot build", tmp, self._sm_worker, build, tmp)
        return info

    def _kill_builder(self) -> None:
        if self._builder is not None:
            self._builder.kill()

    async def _close_builder(self) -> None:
        """After the state-machine worker drained (stop): no build is in progress."""
        if self._builder is not None:
            await asyncio.to_thread(self._builder.close)

    def _on_snapshot_rejected(self, peer: NodeId, msg: SnapshotRejected) -> None:
        """`peer` discarded the snapshot we sent as corrupt: re-verify our file (module rules)."""
        log.warning(
            "a follower discarded the snapshot we sent as corrupt",
            node=self.id,
            peer=peer,
            index=msg.index,
            term=msg.term,
            reason=msg.reason,
        )
        path = snapshot_path(self.opts.data_dir, msg.term, msg.index)
        now = asyncio.get_running_loop().time()
        last = self._rechecked
        if (
            self._stopping
            or self.failed
            or (last is not None and last[0] == path and now < last[1])
        ):
            return  # stopping, a check under way, or this file was checked moments ago
        self._rechecked = (path, now + RECHECK_INTERVAL_S)
        self._tasks.append(asyncio.create_task(self._recheck_snapshot(path)))

    async def _recheck_snapshot(self, path: Path) -> None:
        try:
            if not path.exists():
                return  # pruned since: a newer snapshot is what we send now
            try:
                await self._io("snapshot verify", path, self._sm_worker, verify_snapshot_file, path)
            except CorruptSnapshotError as exc:
                log.error(
                    "our own snapshot file is corrupt: rebuilding it from the state machine",
                    node=self.id,
                    path=str(path),
                    error=str(exc),
                )
                await self._rebuild_snapshot(path)
                return
            log.info(
                "our snapshot file is intact: the follower's copy was damaged in transit",
                node=self.id,
                path=str(path),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._die(exc)

    async def _rebuild_snapshot(self, bad: Path) -> None:
        if self._snapshotting:
            # The build under way replaces it: same index -> same file name; a later index ->
            # that becomes the snapshot sent, and the bad file is no longer referenced.
            log.info("a snapshot build is under way: it replaces the corrupt file", node=self.id)
            return
        self._snapshotting = True
        await self._take_snapshot()  # resets _snapshotting; stops the node on any error
        if self.failed or self._stopping:
            return
        current = Path(self.storage.snapshot().data.decode())
        if bad != current and bad.exists():
            await self._io("unlink", bad, self._sm_worker, bad.unlink)
            await self._io("fsync (directory)", bad.parent, self._sm_worker, fsync_dir, bad.parent)
        log.warning("snapshot rebuilt after a corrupt file", node=self.id, path=str(current))

    def _free_in_steps(self, dropped: list[Any]) -> None:
        """Drop compacted log entries FREE_STEP per loop turn (module rules)."""
        del dropped[-FREE_STEP:]
        if dropped:
            asyncio.get_running_loop().call_soon(self._free_in_steps, dropped)

    def _prune_snapshots(self, keep: int) -> None:
        """Remove all but the newest `keep` snapshot files (on the state-machine worker)."""
        files = sorted((self.opts.data_dir / "snapshots").glob("snap-*.snap"))
        for old in files[:-keep]:
            old.unlink(missing_ok=True)
