"""Errors of the Raft core.

Tree:
    RaftError                  base of everything the core raises
    ├── ProposalDropped        expected: the proposal cannot be accepted now (not leader,
    │   └── NotLeader          transfer in progress, conf change pending); carries a leader hint
    ├── Compacted              expected: asked for entries below the first retained index
    ├── Unavailable            expected: asked for entries not yet in storage
    └── InvariantViolation     a broken invariant: the node must stop, never limp on
"""

from __future__ import annotations

from raftkv.raft.types import NodeId


class RaftError(Exception):
    pass


class ProposalDropped(RaftError):
    pass


class NotLeader(ProposalDropped):
    def __init__(self, leader_hint: NodeId | None) -> None:
        super().__init__(f"not the leader (leader: {leader_hint or 'unknown'})")
        self.leader_hint = leader_hint


class Compacted(RaftError):
    pass


class Unavailable(RaftError):
    pass


class InvariantViolation(RaftError):
    pass
