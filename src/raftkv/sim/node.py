"""One simulated server: a Raft core, its memory disk, its state machine, and its Ready loop.

Rules (the driver contract of `raft/ready.py`, executed through `Ready.steps()`):
- A Ready is taken only when none is pending; its actions run in order until `Persist`, whose
  write is queued on the disk and completes at a later `PersistDone` event (the fsync). Only then
  do the remaining actions run — persisted messages, apply, read states — and `advance`.
- Between `ready()` and `PersistDone` the core keeps stepping messages and ticks (as the real
  driver does while its writer thread fsyncs), and what needs no fsync (heartbeats, appends to
  followers, read answers) goes out through `take_messages()`; `ready()` is not called again.
- A crash drops the core, the volatile storage, the pending Ready and held events; the disk keeps
  what its crash model says. A restart rebuilds everything from the disk.
- The node reports what it persists and applies to its `Host` (the cluster), which checks the
  invariants and answers clients; the node itself judges nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Protocol

from raftkv.raft.config import RaftConfig
from raftkv.raft.messages import AnyMessage
from raftkv.raft.rawnode import RawNode
from raftkv.raft.ready import Action, Apply, Persist, ReadStates, Ready, SendMessages
from raftkv.raft.storage import MemoryStorage
from raftkv.raft.types import ConfState, Entry, Index, NodeId, ReadState, Snapshot
from raftkv.sim.disk import Disk
from raftkv.sim.scheduler import Event
from raftkv.sim.statemachine import KvMachine

NodeFactory = Callable[[RaftConfig, MemoryStorage, random.Random], RawNode]


class Host(Protocol):
    """What a node needs from the cluster around it."""

    def send(self, node: SimNode, msgs: tuple[AnyMessage, ...]) -> None: ...
    def schedule_persist(self, node: SimNode, sync: bool) -> None: ...
    def on_take_ready(self, node: SimNode, ready: Ready) -> None: ...
    def on_persist(self, node: SimNode, op: Persist) -> None: ...
    def on_apply_snapshot(self, node: SimNode, snap: Snapshot, prev_applied: Index) -> None: ...
    def on_apply_entry(self, node: SimNode, entry: Entry, prev_applied: Index) -> None: ...
    def on_read_states(self, node: SimNode, states: tuple[ReadState, ...]) -> None: ...


class SimNode:
    def __init__(
        self,
        node_id: NodeId,
        config: RaftConfig,
        bootstrap: ConfState,
        factory: NodeFactory,
        host: Host,
    ) -> None:
        self.id = node_id
        self.config = config
        self.factory = factory
        self.host = host
        self.disk = Disk(bootstrap)
        self.epoch = 0  # incarnation counter: bumped by every start, so stale events are dropped
        self.alive = False
        self.paused = False
        self.core: RawNode | None = None  # None while crashed
        self.storage = MemoryStorage()  # the volatile view the core reads
        self.sm = KvMachine()
        self.pending: Ready | None = None  # taken, its Persist not yet complete
        self._rest: Iterator[Action] | None = None  # actions of `pending` after its Persist
        self._op: Persist | None = None  # the pending Persist
        self.held: list[Event] = []  # events that arrived while paused, in arrival order
        self.restarts = 0

    # -- life cycle ---------------------------------------------------------------------------
    def start(self, rng: random.Random) -> None:
        """Boot (or reboot) from the disk."""
        self.epoch += 1
        self.alive = True
        self.paused = False
        self.held = []
        self.pending, self._rest, self._op = None, None, None
        self.storage = self.disk.load()
        self.sm = KvMachine()
        self.sm.restore(self.storage.snapshot())
        self.core = self.factory(self.config, self.storage, rng)

    def crash(self, rng: random.Random) -> int:
        """Stop now; returns how many queued writes survived."""
        self.alive = False
        self.paused = False
        self.core = None
        self.pending, self._rest, self._op = None, None, None
        self.held = []
        self.restarts += 1
        return self.disk.crash(rng)

    @property
    def running(self) -> bool:
        return self.alive and not self.paused

    def the_core(self) -> RawNode:
        if self.core is None:
            raise RuntimeError(f"{self.id} is down")
        return self.core

    # -- the Ready loop -----------------------------------------------------------------------
    def pump(self) -> None:
        """Take and run a Ready if the core has one and none is pending; while one is pending,
        send what needs no durability (`take_messages`), as the runtime's driver does."""
        core = self.core
        if core is None or self.paused:
            return
        if self.pending is not None:
            msgs = core.take_messages()
            if msgs:
                self.host.send(self, tuple(msgs))
            return
        if not core.has_ready():
            return
        rd = core.ready()
        self.host.on_take_ready(self, rd)
        self.pending = rd
        steps = rd.steps()
        for action in steps:
            if isinstance(action, Persist):
                self._op = action
                self._rest = steps
                self.disk.write(action)
                self.host.schedule_persist(self, action.sync)
                return
            self._run(action)
        self._finish()

    def persist_done(self) -> None:
        """The pending write completed: make it visible to the core, then run the rest."""
        op, rest = self._op, self._rest
        if op is None or rest is None:
            raise RuntimeError(f"{self.id}: persist completion without a pending write")
        if op.sync:
            self.disk.sync()
        self.host.on_persist(self, op)
        if op.snapshot is not None:
            self.storage.apply_snapshot(op.snapshot)
        if op.entries:
            self.storage.append(op.entries)
        if op.hard_state is not None:
            self.storage.set_hard_state(op.hard_state)
        self._op, self._rest = None, None
        for action in rest:
            self._run(action)
        self._finish()

    def _run(self, action: Action) -> None:
        match action:
            case SendMessages(messages=msgs):
                self.host.send(self, msgs)
            case Apply(snapshot=snap, entries=entries):
                if snap is not None:
                    prev = self.sm.applied
                    self.sm.restore(snap)
                    self.host.on_apply_snapshot(self, snap, prev)
                for e in entries:
                    prev = self.sm.applied
                    self.sm.apply(e)
                    self.host.on_apply_entry(self, e, prev)
            case ReadStates(read_states=states):
                self.host.on_read_states(self, states)
            case Persist():
                raise RuntimeError("a Ready with two Persist actions")

    def _finish(self) -> None:
        rd, core = self.pending, self.core
        self.pending = None
        if rd is not None and core is not None:
            core.advance(rd)

    # -- compaction ---------------------------------------------------------------------------
    def compact(self, keep: int) -> Snapshot | None:
        """Snapshot the applied state and drop the log up to `applied - keep`."""
        core = self.core
        if core is None or self.pending is not None:
            return None
        applied = self.sm.applied
        if applied <= self.storage.snapshot().meta.index:
            return None
        conf = core.status().conf
        snap = self.storage.create_snapshot(applied, conf, self.sm.image())
        self.disk.compact(snap)
        upto = applied - keep
        if upto > self.storage.first_index() - 1:
            self.storage.compact(type(applied)(upto))
        return snap
