"""Core value types of the Raft state machine.

Rules:
- Everything here is an immutable value (frozen msgspec Structs) so the same classes serve as
  the wire and storage format (`raftkv.codec`) without a conversion layer.
- Ids are plain strings (`NodeId`); wherever order matters iterate them *sorted*.
- Index 0 / term 0 denote "nothing": the log proper starts at index 1.
"""

from __future__ import annotations

import enum
from typing import NewType

import msgspec

NodeId = NewType("NodeId", str)
Term = NewType("Term", int)
Index = NewType("Index", int)

NO_NODE: NodeId | None = None


class EntryKind(enum.IntEnum):
    """What an entry's data holds. An empty NORMAL entry is the leader's no-op (§5.4.2)."""

    NORMAL = 0
    CONF_CHANGE = 1


class Entry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One log entry. `data` is opaque to the core except for CONF_CHANGE entries."""

    term: Term
    index: Index
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


class HardState(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """State that must be durable before a node acts on it (§5, Figure 2 'persistent state').

    commit is persisted too so a restarted node re-applies without waiting for a leader.
    """

    term: Term = Term(0)
    vote: NodeId | None = None
    commit: Index = Index(0)


class ConfState(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A cluster configuration: voters decide, learners only replicate. Both sorted, disjoint."""

    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()

    def all_nodes(self) -> tuple[NodeId, ...]:
        return tuple(sorted((*self.voters, *self.learners)))


class ConfChangeKind(enum.IntEnum):
    ADD_VOTER = 0
    ADD_LEARNER = 1
    REMOVE_NODE = 2


class ConfChange(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A single-server membership change (thesis §4.1). `context` is opaque (e.g. an address)."""

    kind: ConfChangeKind
    node_id: NodeId
    context: bytes = b""


class SnapshotMeta(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Where a snapshot stands in the log and the configuration in force at that point."""

    index: Index
    term: Term
    conf: ConfState


class Snapshot(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A state-machine image. `data` is opaque to the core (the runtime may put a handle here)."""

    meta: SnapshotMeta
    data: bytes = b""


class Role(enum.Enum):
    FOLLOWER = "Follower"
    PRE_CANDIDATE = "PreCandidate"
    CANDIDATE = "Candidate"
    LEADER = "Leader"


class SoftState(msgspec.Struct, frozen=True, gc=False):
    """Volatile state the application may want to observe (not persisted)."""

    leader: NodeId | None
    role: Role


class ReadState(msgspec.Struct, frozen=True, gc=False):
    """ReadIndex result (thesis §6.4): reads tagged `context` are served once applied >= index."""

    index: Index
    context: bytes
