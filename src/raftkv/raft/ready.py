"""`Ready`: what the core asks its driver to do, and the one order in which to do it.

Rules (the driver contract, written once, executed by both `runtime/` and `sim/`):
1. `SendMessages(ready.messages)` — may go out before or while persisting (thesis §10.2.1: a
   leader's appends overlap its own fsync).
2. `Persist(snapshot, entries, hard_state, sync)` — durable before anything below; one fsync.
3. `SendMessages(ready.persisted_messages)` — vote grants and append acks, only once durable.
4. `Apply(snapshot, committed_entries)` — apply to the state machine, resolve proposals.
5. `ReadStates(read_states)` — answer ReadIndex waiters once applied >= their index.
Then `advance(ready)`; never call `ready()` again before that.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from raftkv.raft.messages import AnyMessage
from raftkv.raft.types import Entry, HardState, ReadState, Snapshot, SoftState


class SendMessages(msgspec.Struct, frozen=True, gc=False):
    messages: tuple[AnyMessage, ...]


class Persist(msgspec.Struct, frozen=True, gc=False):
    snapshot: Snapshot | None
    entries: tuple[Entry, ...]
    hard_state: HardState | None
    sync: bool


class Apply(msgspec.Struct, frozen=True, gc=False):
    snapshot: Snapshot | None
    entries: tuple[Entry, ...]


class ReadStates(msgspec.Struct, frozen=True, gc=False):
    read_states: tuple[ReadState, ...]


Action = SendMessages | Persist | Apply | ReadStates


class Ready(msgspec.Struct, frozen=True, gc=False):
    soft_state: SoftState | None
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None
    messages: tuple[AnyMessage, ...]
    persisted_messages: tuple[AnyMessage, ...]
    committed_entries: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    must_sync: bool

    def steps(self) -> Iterator[Action]:
        """The actions of this Ready, in the order the driver must execute them."""
        if self.messages:
            yield SendMessages(self.messages)
        if self.snapshot is not None or self.entries or self.hard_state is not None:
            yield Persist(self.snapshot, self.entries, self.hard_state, self.must_sync)
        if self.persisted_messages:
            yield SendMessages(self.persisted_messages)
        if self.snapshot is not None or self.committed_entries:
            yield Apply(self.snapshot, self.committed_entries)
        if self.read_states:
            yield ReadStates(self.read_states)
