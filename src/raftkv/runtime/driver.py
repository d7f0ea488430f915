"""The Ready loop: the ONLY place asyncio meets the Raft core (ARCHITECTURE.md §1).

Rules:
- Everything that arrives during one loop turn (proposals, peer messages, reads) is stepped into
  the core; then ONE Ready is processed in the order of `Ready.steps()`: send, persist (one
  SQLite transaction = one fsync, in the single writer thread), send the persisted messages,
  apply (LMDB, on the loop thread: fast, no fsync), answer reads, `advance`. A Ready's messages
  are written at once (`send(now=True)`); its persisted messages (acks, votes) are sent by the
  writer thread itself right after the save returned (runtime/persist.py), never before it
  (tests/unit/runtime/test_ack_order.py).
- The core is only touched from the loop thread. While the writer thread fsyncs, the loop keeps
  stepping messages and ticks in, but never calls `ready()` before `advance()`.
- A snapshot received from the leader is installed into the state machine BEFORE its metadata
  is saved in the Raft log, so a crash in between never leaves a log that starts after a state
  the state machine does not have.
- A broken invariant stops the node (`fatal` resolves); a malformed peer message is logged and
  dropped. A committed entry that cannot be decoded halts the node instead (`halt.py`: it
  stays up, reports the index, applies nothing more; never a crash loop). A storage error on
  any durability path (log save, apply, state sync, snapshot build or install, compaction)
  is never retried (storage/failure.py: fsyncgate): it is wrapped in a `StorageFailure`
  naming the operation and file and stops the node; nothing is acknowledged after it, and
  `stop()` then writes nothing more (no hard-state save, no sync, no close that checkpoints).
  From a failure (or the start of `stop()`) on, no read is served either, stale ones
  included (`check_readable`, `when_reads_refused`: halt.py).
- Snapshot build, verification of a received snapshot and its install live in
  `runtime/snapshots.py` (a mixin of the driver), with their crash-safe step order.
- `propose` and `read_barrier` also exist without a coroutine (`runtime/soon.py`, a mixin:
  the same steps up to the await, for the fast HTTP engine).
- Work on the state machine off the loop thread (snapshot build, install, sync) runs on ONE
  executor (`_sm_worker`) that `stop()` drains before closing LMDB: no transaction outlives
  the environment.
- Metrics (`metrics.py`): the driver only bumps counters and hands over durations and messages;
  gauges are read at scrape time through `metrics_sample`.
- Membership: member addresses are the replicated record (runtime/member_table.py), stored
  with the configuration in one apply transaction; a removed node stops (`NodeRemoved`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from random import Random
from typing import Any

import msgspec
import structlog

from raftkv.codec.forward import FORWARDING_VERSION
from raftkv.kv.quota import alarm_flags, space_figures
from raftkv.raft.confchange import conf_after
from raftkv.raft.config import RaftConfig
from raftkv.raft.errors import InvariantViolation, NotLeader, ProposalDropped
from raftkv.raft.messages import AnyMessage, InstallSnapshot, RequestVote, RequestVoteResponse
from raftkv.raft.rawnode import RawNode, Status
from raftkv.raft.ready import Apply, Persist, ReadStates, Ready, SendMessages
from raftkv.raft.storage import MemoryStorage
from raftkv.raft.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Index,
    NodeId,
    Role,
    Snapshot,
    SnapshotMeta,
    Term,
)
from raftkv.runtime import testhooks, votelog
from raftkv.runtime.admission import TurnGate
from raftkv.runtime.api import (
    NodeHalted,
    NodeStopping,
    NoLeaderError,
    NotLeaderError,
    OperationTimeout,
)
from raftkv.runtime.features import OWN_VERSIONS
from raftkv.runtime.halt import HaltSteps
from raftkv.runtime.member_table import MemberTable, NodeRemoved, initial_conf, load_record
from raftkv.runtime.members import ClusterRecord, encode_record, record_after
from raftkv.runtime.metrics import DisabledMetrics, NodeSample, RuntimeMetrics
from raftkv.runtime.options import NodeOptions
from raftkv.runtime.persist import PersistSteps, notices_only
from raftkv.runtime.snapshots import SnapshotSteps
from raftkv.runtime.soon import SoonCalls
from raftkv.runtime.ticks import TickLoop
from raftkv.runtime.waiters import (
    AppliedWaiters,
    ProposalLost,
    ProposalWaiters,
    ReadWaiters,
    await_within,
)
from raftkv.storage import recovery
from raftkv.storage.errors import UndecodableEntryError
from raftkv.storage.failure import StorageFailure, is_storage_error, wrap
from raftkv.storage.format import open_data_dir
from raftkv.storage.raftlog import DurableLog
from raftkv.storage.recovery import snapshot_path as snapshot_path  # re-exported (ops)
from raftkv.storage.snapshot_file import SnapshotInfo
from raftkv.transport.tcp import PeerTransport, TransportTuning

_conf_decoder = msgspec.msgpack.Decoder(ConfChange)
log = structlog.get_logger("raftkv.runtime")


class RaftDriver(SnapshotSteps, HaltSteps, TickLoop, PersistSteps, SoonCalls):
    def __init__(self, opts: NodeOptions) -> None:
        self.opts = opts
        self.id = opts.node_id
        self.fatal: asyncio.Future[BaseException] | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"wal-{self.id}")
        self._sm_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sm-{self.id}")
        self._wake = asyncio.Event()
        self._leader_known = asyncio.Event()
        self._soft_changed: asyncio.Future[None] | None = None
        self._proposals = ProposalWaiters()
        # A random part per process: contexts of an earlier incarnation never match (waiters.py).
        self._reads = ReadWaiters(f"{self.id}.{secrets.token_hex(4)}".encode())
        self._applied_waiters = AppliedWaiters()
        self.gate = TurnGate(opts.requests_per_turn)  # bounded work per loop turn (admission.py)
        self._reads_need_leader: list[bytes] = []
        self._read_hold_s = opts.tick_ms / 1000  # the longest a read batch waits for the last
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        self.draining = False  # graceful stop under way: refuse new requests
        self._snapshotting = False
        self._rechecked: tuple[Path, float] | None = None  # snapshots.py: re-verified file
        self._persisting = False  # a Ready's persist step is in the writer thread
        self._pump_scheduled = False
        self._pending_hard_state: HardState | None = None  # commit-only change, saved lazily
        self._bootstrap_until = 0.0  # fresh cluster: the bootstrap node campaigns until then
        self._hold_elections_until = 0.0  # fresh cluster: other nodes wait for it until then
        self._last_snapshot_index = Index(0)
        self.table = MemberTable(self.id)  # the replicated member record and its effects
        self._now = 0.0  # loop time, refreshed every tick (cheap for `table.heard`)
        self.metrics = (
            RuntimeMetrics(
                self.id, opts.election_ticks * opts.tick_ms / 1000.0, self.metrics_sample
            )
            if opts.metrics
            else DisabledMetrics()
        )

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop: asyncio.AbstractEventLoop = loop
        self.fatal = loop.create_future()
        d = self.opts.data_dir
        # Before any other file: refuse a newer format, migrate an older one (storage/format.py).
        fmt = await asyncio.to_thread(open_data_dir, d)
        if fmt.migrated:
            log.info("data directory migrated", node=self.id, steps=fmt.migrated, to=fmt.version)
        # Startup recovery (storage/recovery.py): durable dirs, leftovers removed, the state
        # rebuilt after an unclean OS restart, state and log reconciled or the start refused.
        await asyncio.to_thread(recovery.prepare_dirs, d)
        self.durable = await asyncio.to_thread(DurableLog.open, d / "raft.db")
        loaded = await asyncio.to_thread(self.durable.load)
        self.sm = await asyncio.to_thread(recovery.open_state, d)
        loaded = await asyncio.to_thread(recovery.reconcile, d, self.durable, loaded, self.sm)
        self._bootstrap_conf = initial_conf(self.sm.cluster, self.opts)
        self.storage = MemoryStorage(self._bootstrap_conf)
        if loaded.snapshot is not None:
            meta = loaded.snapshot
            path = snapshot_path(d, meta.term, meta.index)
            if not meta.conf.voters:
                # Recorded before the configuration was kept in the state (see below): no
                # cluster has zero voters, so it can only mean the configured one.
                meta = SnapshotMeta(meta.index, meta.term, self._bootstrap_conf)
            self.storage.apply_snapshot(Snapshot(meta, str(path).encode()))
            self._last_snapshot_index = meta.index
        if not self.sm.conf.voters:
            # Until a conf change commits, the configured cluster is the configuration in force.
            # It must be in the state: snapshots carry the state's configuration, and a node
            # restarted from (or sent) a snapshot with no voters could never campaign again.
            await asyncio.to_thread(self.sm.set_conf, self._bootstrap_conf)
        self.table.load(await load_record(self.sm, self.opts, self._bootstrap_conf), start=True)
        self.storage.restore_log(loaded.base, loaded.entries)  # kept entries included
        hs = loaded.hard_state
        if hs.commit < self.sm.applied_index <= self.storage.last_index():
            # The commit index is saved lazily (a commit-only change needs no fsync), but what
            # the state machine applied was committed: start from there (applied <= commit).
            hs = HardState(hs.term, hs.vote, self.sm.applied_index)
        self.storage.set_hard_state(hs)
        cfg = RaftConfig(
            id=self.id,
            election_ticks=self.opts.election_ticks,
            heartbeat_ticks=1,
            max_append_bytes=self.opts.max_append_bytes,
            lease_ticks=self.opts.lease_ticks,
        )
        self.raw = RawNode(cfg, self.storage, Random())
        fresh = loaded.hard_state.term == 0 and not loaded.entries and loaded.snapshot is None
        if fresh and self.opts.bootstrap_id == self.id:
            self._bootstrap_until = loop.time() + 10.0
        elif fresh and self.opts.bootstrap_id in self.opts.peers_raft:
            # A fresh cluster: give the bootstrap node a head start so it leads first, as the
            # seed shows; if it is not there, we campaign normally after the grace period.
            self._hold_elections_until = loop.time() + 2.0
        peers = self.table.dial_map(self.opts.peers_raft)
        self.transport = PeerTransport(
            self.id,
            self.opts.cluster_name,
            self.opts.raft_listen,
            peers,
            self._on_message,
            source_host=self.opts.source_host,
            on_unreachable=self._on_unreachable,
            on_snapshot_status=self._on_snapshot_status,
            on_snapshot_rejected=self._on_snapshot_rejected,  # runtime/snapshots.py
            snapshot_dir=d / "incoming",
            tuning=self._transport_tuning(),
            is_member=self._admits,  # the Hello check: see _admits
            tls=self.opts.peer_tls,
            advertise=self.opts.advertise_versions or OWN_VERSIONS,  # runtime/features.py
            forwarding=FORWARDING_VERSION if self.opts.peer_forwarding else 0,
        )
        await self.transport.start()
        self._start_builder()
        self._tasks.append(asyncio.create_task(self._ready_loop(), name=f"ready-{self.id}"))
        self._tasks.append(asyncio.create_task(self._tick_loop(), name=f"tick-{self.id}"))
        if self._bootstrap_until:
            self.raw.campaign()
            self._wake.set()
        log.info(
            "node started",
            node=self.id,
            term=self.raw.status().term,
            commit=self.raw.status().commit,
            applied=self.sm.applied_index,
            last_index=self.raw.status().last_index,
        )

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._reads_refused()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.abort_pending()
        if self._step_out is not None:
            await asyncio.shield(self._step_out)  # halted: the transport is closing already
        await self.transport.stop()
        # A snapshot build waits on the builder process on the state-machine worker; its
        # task is cancelled above, so end the builder rather than wait for (or on) it.
        self._kill_builder()
        # Threads still inside LMDB or SQLite finish before anything is closed.
        await asyncio.to_thread(self._sm_worker.shutdown, True)
        await asyncio.to_thread(self._writer.shutdown, True)
        await self._close_builder()
        if self.failed:
            # After a storage failure nothing is written again (no retried fsync, no
            # checkpoint on close): the process exits and the next start recovers.
            log.info("node stopped after a failure; files left as they are", node=self.id)
            return
        if self._pending_hard_state is not None:
            hs = self._pending_hard_state
            await asyncio.to_thread(self.durable.save, hs, (), None)
        await asyncio.to_thread(self.durable.close)
        await asyncio.to_thread(self.sm.sync)
        self.sm.close()
        await asyncio.to_thread(recovery.mark_clean, self.opts.data_dir)
        log.info("node stopped", node=self.id)

    @property
    def failed(self) -> bool:
        return self.fatal is not None and self.fatal.done()

    async def hand_off(self, timeout_s: float) -> bool:
        """Graceful-stop step 1 (thesis §3.10): if we lead, transfer leadership to the most
        up-to-date voter and wait (bounded) until it leads. New requests are refused from now
        on. Returns True if we are not the leader any more."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            st = self.raw.status()
            if st.role is not Role.LEADER:
                return True
            followers = [
                (pr.match, node)
                for node, pr in st.progress.items()
                if node != self.id and node in st.conf.voters
            ]
            if not followers:
                return False  # a one-node cluster has nobody to hand over to
            if st.lead_transferee is None:
                target = max(followers)[1]
                log.info("transferring leadership before stopping", node=self.id, to=target)
                self.raw.transfer_leader(target)
                self._wake.set()
                self._schedule_pump()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(self._soft_change()), max(0.0, deadline - loop.time())
                )
        return self.raw.status().role is not Role.LEADER

    async def drain(self, timeout_s: float) -> None:
        """Graceful-stop step 2: let in-flight proposals finish (bounded); the rest fail with
        NodeStopping when `stop()` runs."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(self._proposals) and loop.time() < deadline:
            await asyncio.sleep(self.opts.tick_ms / 1000.0)

    def abort_pending(self) -> None:
        """Fail what still waits: proposed writes with OperationTimeout (they may yet commit
        elsewhere: the outcome is unknown, 504), reads with NodeStopping (safe to retry)."""
        self._proposals.fail_all(
            OperationTimeout("the node stopped before the write was confirmed; outcome unknown")
        )
        self._reads.fail_all(NodeStopping("node is shutting down"))
        self._applied_waiters.fail_all(NodeStopping("node is shutting down"))
        self.gate.fail_all(NodeStopping("node is shutting down"))

    def _die(self, exc: BaseException) -> None:
        if self.fatal is None or self.fatal.done():
            return  # the first failure is the one reported
        if is_storage_error(exc):
            if not isinstance(exc, StorageFailure):
                exc = StorageFailure("storage operation", self.opts.data_dir, exc)
            log.critical(str(exc), node=self.id)
        elif isinstance(exc, UndecodableEntryError):
            # Every node holds this entry: skipping it would fork the state machines, and
            # exiting would only restart into it again. Halt: up, reporting, applying nothing.
            self._halt(exc)
            return
        else:
            log.critical("node stopping on a broken invariant", node=self.id, error=repr(exc))
        # Nothing may be acknowledged from now on: waiters fail before any other task runs.
        self.abort_pending()
        self.fatal.set_result(exc)
        self._reads_refused()  # stale reads too, read workers first (halt.check_readable)

    def _admits(self, node: str) -> bool:
        """May `node` open a peer connection to us (the transport's Hello check)?

        Never a removed id (`table.accepts`: removed ids never come back). A member of the
        replicated record, or a peer we were configured with (a joining node), may. An id we do
        not know may too, but only under mutual TLS: a node that missed conf changes must let a
        leader added meanwhile catch it up, and the cluster CA's certificate proves the id
        (`check_hello` compares them). Without TLS an unknown id is refused, because nothing
        tells it from a made-up one (the `mallory` attack of issue 10,
        tests/integration/test_peer_attacks.py) -- unless a member we know, or the record at a
        restart's `--join` URL that lists us, lists it (`table.vouched`, member_table.py)."""
        if not self.table.accepts(node):
            return False
        if node in self.table.record.members or node in self.opts.peers_raft:
            return True
        if node in self.table.vouched:  # a member we know lists it (member_table.py)
            return True
        return self.opts.peer_tls is not None

    def _transport_tuning(self) -> TransportTuning:
        tick_s = self.opts.tick_ms / 1000.0
        return TransportTuning(
            keepalive_interval=tick_s,
            # Only for half-open links (a peer's host died without a FIN; a killed process's
            # kernel closes its sockets): never a GC pause or a starved sender on a loaded
            # machine. At 0.5 s, stalls of 0.2-0.4 s at load 13 dropped live links during
            # elections (no heartbeats then) and every TLS reconnect cost more CPU.
            idle_timeout=max(4 * self.opts.election_ticks * tick_s, 2.0),
            max_snapshot_bytes=self.opts.max_snapshot_bytes,
        )

    # -- inputs -------------------------------------------------------------------------------
    def _on_message(self, msg: AnyMessage) -> None:
        if self._stopping or self.failed or self.halted:
            return
        if msg.from_ in self.table.removed:
            self.table.refuse(msg.from_, self._now)
            return
        self.table.heard[msg.from_] = self._now
        if isinstance(msg, InstallSnapshot) and msg.snapshot.data:
            # File mode: verify the received file before Raft sees it (off the loop thread).
            self._tasks.append(asyncio.create_task(self._verify_then_step(msg)))
            return
        self._step(msg)

    def _step(self, msg: AnyMessage) -> None:
        if not self._tick_if_due():  # time order: a due tick first (ticks.py)
            return
        self.metrics.received(msg)
        try:
            if isinstance(msg, RequestVote | RequestVoteResponse):
                votelog.step(self.id, self.raw, msg)  # debug lines: why a vote went as it did
            else:
                self.raw.step(msg)
        except InvariantViolation as exc:
            self._die(exc)
            return
        except Exception as exc:  # a malformed message must never crash the node
            log.warning("dropped a peer message", peer=msg.from_, error=repr(exc))
            return
        self._wake.set()
        self._schedule_pump()

    def _schedule_pump(self) -> None:
        """While a Ready is being persisted, still send what needs no fsync once this turn ends
        (heartbeats must not wait behind a slow disk, or followers start elections)."""
        if self._persisting and not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        if self._persisting and not self._stopping and not self.failed:
            self._issue_reads()
            msgs = self.raw.take_messages()
            if msgs:
                self.metrics.sent(msgs)
                self.transport.send(msgs)

    def _on_unreachable(self, node: NodeId) -> None:
        self.metrics.unreachable(node)
        self.raw.report_unreachable(node)

    def _on_snapshot_status(self, node: NodeId, ok: bool) -> None:
        self.metrics.snapshot_sent(node, ok)
        self.raw.report_snapshot(node, ok)
        self._wake.set()

    # -- the Ready loop -----------------------------------------------------------------------
    async def _ready_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._issue_reads()
                while self.raw.has_ready():
                    rd = self.raw.ready()
                    await self._handle_ready(rd)
                    self.raw.advance(rd)
                    self._after_advance(rd)
                    self._issue_reads()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._die(exc)

    async def _handle_ready(self, rd: Ready) -> None:
        acks_sent = False  # rd.persisted_messages already left from the persist completion
        notices: tuple[AnyMessage, ...] = ()  # commit notices, sent once the replies are due
        for action in rd.steps():
            match action:
                case SendMessages(messages=msgs) if acks_sent and msgs is rd.persisted_messages:
                    pass
                case SendMessages(messages=msgs) if rd.committed_entries and notices_only(msgs):
                    # Only commit indices for the followers: they may leave later (§5.3: a
                    # commit index reaches followers whenever it does), after the apply step
                    # below wakes the waiting requests, whose replies then go out first.
                    notices = msgs
                case SendMessages(messages=msgs):
                    # At once, not at the end of the turn: a leader's appends leave before its
                    # own WAL hand-off (thesis §10.2.1), a follower's acks without a loop turn.
                    self.metrics.sent(msgs)
                    self.transport.send(msgs, now=True)
                case Persist(snapshot=snap, entries=entries, hard_state=hs, sync=sync):
                    if snap is not None:
                        snap = await self._install_snapshot(snap)
                    if hs is not None and not sync and snap is None and not entries:
                        self._pending_hard_state = hs  # commit-only: no fsync needed
                    else:
                        if hs is None:
                            hs = self._pending_hard_state
                        self._pending_hard_state = None
                        meta = snap.meta if snap is not None else None
                        self._persisting = True
                        try:
                            took = await self._io(
                                "log commit",
                                self.durable.path,
                                self._writer,
                                self._save,
                                hs,
                                entries,
                                meta,
                                rd.persisted_messages,
                            )
                        finally:
                            self._persisting = False
                        acks_sent = bool(rd.persisted_messages)
                        self.metrics.persisted(took, len(entries))
                        if snap is not None:
                            testhooks.crash_point("snapshot-install:recorded")
                    if snap is not None:
                        self.storage.apply_snapshot(snap)
                    self.storage.append(entries)
                    if hs is not None:
                        self.storage.set_hard_state(hs)
                case Apply(entries=entries):
                    self._apply(entries)
                case ReadStates(read_states=states):
                    for rs in states:
                        self._reads.read_state(rs.context, rs.index, self.sm.applied_index)
        if notices:
            self.metrics.sent(notices)
            self.transport.send(notices)  # at the end of this turn, behind the woken requests
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.leader)

    def _apply(self, entries: tuple[Entry, ...]) -> None:
        try:
            if testhooks.undecodable_marker:
                testhooks.check_undecodable(entries, self.sm.applied_index)
            self._apply_batch(entries)
        except UndecodableEntryError as exc:
            # The batch was one transaction and rolled back: apply what precedes the entry,
            # then let the Ready loop end in `_die` -> `_halt` (halt.py).
            self._apply_batch(tuple(e for e in entries if e.index < exc.index))
            raise

    def _apply_batch(self, entries: tuple[Entry, ...]) -> None:
        todo = [e for e in entries if e.index > self.sm.applied_index]
        new_conf: ConfState | None = None
        record = self.table.record
        for e in todo:
            if e.kind is EntryKind.CONF_CHANGE:
                base = new_conf or (self.sm.conf if self.sm.conf.voters else self._bootstrap_conf)
                try:
                    cc = _conf_decoder.decode(e.data)
                except msgspec.DecodeError as exc:
                    # Committed, so on every node: a corruption to report by index, not a
                    # crash somewhere inside the core (ARCHITECTURE §7).
                    raise UndecodableEntryError(e.index, None, f"bad conf change: {exc}") from exc
                new_conf = conf_after(base, cc)
                record = record_after(record, cc, new_conf)
        if todo:
            # The configuration and member record go in the same LMDB transaction, so a
            # snapshot never pairs an index with the wrong configuration.
            cluster = encode_record(record) if new_conf is not None else None
            try:
                results = self.sm.apply(todo, conf=new_conf, cluster=cluster)
            except Exception as exc:
                raise wrap(exc, "apply (write)", self.sm.path) from exc
            self.metrics.applied(len(todo))
            if new_conf is not None:
                self._set_members(record)
            for e, result in zip(todo, results, strict=True):
                self._proposals.applied(e.index, e.term, result)
        self._reads.applied(self.sm.applied_index)
        self._applied_waiters.applied(self.sm.applied_index)
        if (
            self.sm.applied_index - self._last_snapshot_index >= self.opts.snapshot_every
            and not self._snapshotting
        ):
            self._snapshotting = True
            self._tasks.append(asyncio.create_task(self._take_snapshot()))

    def _set_members(self, record: ClusterRecord) -> None:
        if self.table.adopt(record, self.transport, self.sm.conf):
            self.learned_removed("its own log")

    def learned_removed(self, source: str) -> None:
        """This node was removed (seen in `source`): say so and stop (exit 0)."""
        log.warning("this node was removed from the cluster; stopping", node=self.id, src=source)
        if self.fatal is not None and not self.fatal.done():
            self.fatal.set_result(NodeRemoved(f"node {self.id} was removed from the cluster"))
            self._reads_refused()

    def track(self, term: Term, index: Index) -> asyncio.Future[object]:
        """Resolved when the entry proposed at (term, index) is applied here."""
        self.poke()
        return self._proposals.add(term, index)

    def poke(self) -> None:
        self._wake.set()
        self._schedule_pump()

    def _after_advance(self, rd: Ready) -> None:
        self._reads.drop_done()
        if any(e.kind is EntryKind.CONF_CHANGE for e in rd.committed_entries):
            # advance() applied it to the core's configuration: a removed member's connection
            # to us closes now, not whenever it happens to drop.
            self.transport.drop_non_members()

    def _on_soft_state(self, leader: NodeId | None) -> None:
        st = self.raw.status()
        log.info("raft state", node=self.id, role=st.role.value, term=st.term, leader=leader)
        self.metrics.leader_seen(leader)
        if leader is None:
            self._leader_known.clear()
        else:
            self._leader_known.set()
            if leader == self.id:
                self.table.leading_since = self._now  # the health view starts filling in
            # Reads forwarded to a former leader may be lost: ask the new one.
            self._reads_need_leader.extend(self._reads.unanswered())
            self._wake.set()
        if self._soft_changed is not None and not self._soft_changed.done():
            self._soft_changed.set_result(None)
        self._soft_changed = None

    def _issue_reads(self) -> None:
        batch = self._reads.open_batch
        pending = self._reads_need_leader
        self._reads_need_leader = []
        if batch is not None:
            now = asyncio.get_running_loop().time()
            # One ReadIndex round in flight at a time (as etcd's read loop): reads arriving
            # while one is asked wait for the next, issued as soon as it is answered (or after
            # a tick, should its answer be lost), so a read load costs fewer heartbeat rounds.
            # Each read is still fenced by a round asked after it arrived (thesis §6.4).
            # The open batch is asked only when it closes: no read may join a batch whose
            # ReadIndex already left (waiters.py; §6.4).
            if batch.context in pending or not self._reads.asking(now, self._read_hold_s):
                self._reads.close_batch(now)
                pending.append(batch.context)
        for ctx in dict.fromkeys(pending):  # each context asked once
            try:
                self.raw.read_index(ctx)
                self.metrics.read_index_rounds += 1
            except NotLeader:
                self._reads_need_leader.append(ctx)

    # -- requests -----------------------------------------------------------------------------
    def _soft_change(self) -> asyncio.Future[None]:
        if self._soft_changed is None:
            self._soft_changed = asyncio.get_running_loop().create_future()
        return self._soft_changed

    async def _wait_leader(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self._leader_known.wait(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise NoLeaderError("no leader elected within the wait time") from None

    def leader_elsewhere(self) -> NotLeaderError | None:
        """On a follower that knows its leader: the NotLeaderError `propose` would raise, found
        without proposing (no admission slot, no core call). None when `propose` must run: this
        node leads, no leader is known, or it is stopping or halted (those answers are
        propose's own)."""
        try:
            self.check_serving()  # the same test as propose's, so the two cannot drift
        except (NodeHalted, NodeStopping):
            return None
        raft = self.raw.raft
        leader = raft.leader
        if raft.role is Role.LEADER or leader is None or leader == self.id:
            return None
        return NotLeaderError(leader, self.leader_http(leader))

    def leader_http(self, leader: NodeId | None) -> str | None:
        return self.opts.peers_http.get(leader) if leader is not None else None

    async def propose(self, data: bytes) -> object:
        """Propose on the leader; returns the apply result. Raises the runtime.api errors."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        leader_deadline = start + self.opts.leader_wait_s
        await self.gate.enter()
        while True:
            self.check_serving()
            try:
                term, index = self.raw.propose(data)
            except NotLeader as exc:
                if exc.leader_hint is not None:
                    raise NotLeaderError(
                        exc.leader_hint, self.leader_http(exc.leader_hint)
                    ) from None
                await self._wait_leader(leader_deadline)
                continue
            except ProposalDropped:
                self.metrics.proposals_dropped += 1
                # A transfer or election is under way: wait for the outcome, then retry.
                try:
                    await asyncio.wait_for(
                        self._soft_change(), max(0.0, leader_deadline - loop.time())
                    )
                except TimeoutError:
                    raise NoLeaderError("leadership is changing; try again") from None
                continue
            fut = self._proposals.add(term, index)
            self._wake.set()
            self._schedule_pump()
            remaining = self.opts.request_timeout_s - (loop.time() - start)
            try:
                # Not wait_for (3.11 wraps the future in a new Task) nor asyncio.timeout: a
                # timer handle on our own waiter is the cheapest bound (waiters.await_within).
                result = await await_within(fut, max(0.001, remaining))
            except TimeoutError:
                self.metrics.proposals_failed += 1
                raise OperationTimeout(f"entry {index} not applied in time") from None
            except ProposalLost:
                self.metrics.proposals_dropped += 1
                continue  # definitely not applied: safe to propose again
            except (OperationTimeout, NodeStopping):
                self.metrics.proposals_failed += 1
                raise
            self.metrics.proposals_committed += 1
            return result

    async def read_barrier(self, *, lease: bool = False) -> None:
        """Return once local state reflects every write acknowledged before the call (§6.4).
        `lease`: from the leader's lease if it holds one (§6.4.1; ticks.py), else ReadIndex."""
        self.check_serving()
        if lease and (index := self._lease_read_index()) is not None:
            self.metrics.lease_reads += 1
            await self.wait_applied(index)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.opts.request_timeout_s
        await self.gate.enter()
        if self.raw.leader is None:
            await self._wait_leader(loop.time() + self.opts.leader_wait_s)
        fut, _, _ = self._reads.join()
        self._wake.set()
        self._schedule_pump()
        try:
            await await_within(fut, max(0.001, deadline - loop.time()))
        except TimeoutError:
            if self.raw.leader is None:
                raise NoLeaderError("no leader to confirm the read") from None
            raise OperationTimeout("read not confirmed in time") from None

    # -- observation --------------------------------------------------------------------------
    def status(self) -> Status:
        return self.raw.status()

    async def wait_applied(self, index: int) -> None:
        """Return once this node has applied `index` (read-your-writes, `min_revision`)."""
        if self.sm.applied_index >= index:
            return
        self.check_serving()
        try:
            async with asyncio.timeout(self.opts.request_timeout_s):
                await self._applied_waiters.wait(index)
        except TimeoutError:
            raise OperationTimeout(f"index {index} not applied in time") from None

    async def snapshot_copy(self, dest: Path) -> SnapshotInfo:
        """A snapshot of the state written to `dest` (a backup), reflecting every write
        acknowledged before the call: a ReadIndex barrier (thesis §6.4) first, then the same
        build as automatic snapshots, on the state-machine worker. A failure to write `dest`
        raises OSError and leaves the node running: the node's own files are not involved."""
        await self.read_barrier()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._sm_worker, self.sm.build_snapshot, dest)

    def metrics_sample(self) -> NodeSample:
        """The gauges of /metrics, read when scraped."""
        d = self.opts.data_dir
        st = self.raw.status()
        return NodeSample(
            status=st,
            applied_index=self.sm.applied_index,
            snapshot_index=self._last_snapshot_index,
            pending_proposals=len(self._proposals),
            peers=sorted(n for n in st.conf.all_nodes() if n != self.id),
            outbound_connected=frozenset(self.transport.connected_peers()),
            inbound_connected=frozenset(self.transport.inbound_peers()),
            files=[
                ("log", d / "raft.db"),
                ("log", d / "raft.db-wal"),
                ("state", d / "state" / "data.mdb"),
                *(("snapshots", p) for p in (d / "snapshots").glob("snap-*.snap")),
            ],
            alarms=[*self.sm.read(alarm_flags), ("halted", self.halted is not None)],
            space=self.sm.read(space_figures),
        )
