"""Errors of the Raft core.

Tree:
    RaftError                  base of everything the core raises
    ├── ProposalDropped        expected: the proposal cannot be accepted now (not leader,
    │   │                      transfer in progress, conf change pending)
    │   ├── NotLeader          carries a leader hint
    │   └── ConfChangeRefused  a conf change refused by the §4.1 rules; `reason` says which:
    │                          "pending" (one at a time), "term" (no commit in this term yet),
    │                          "invalid" (already a member, not a member, last voter)
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


class ConfChangeRefused(ProposalDropped):
    def __init__(self, reason: str, words: str) -> None:
        super().__init__(words)
        self.reason = reason  # "pending" | "term" | "invalid"


class Compacted(RaftError):
    pass


class Unavailable(RaftError):
    pass


class InvariantViolation(RaftError):
    pass
