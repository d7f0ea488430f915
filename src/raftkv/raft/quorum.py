"""Majority quorum arithmetic over a configuration's voters (learners never count)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from raftkv.raft.types import Index, NodeId


def quorum_size(voters: Sequence[NodeId]) -> int:
    return len(voters) // 2 + 1


def committed_index(voters: Sequence[NodeId], match: Mapping[NodeId, Index]) -> Index:
    """The largest index replicated on a majority of voters (§5.3)."""
    if not voters:
        return Index(0)
    indexes = sorted((match.get(v, Index(0)) for v in voters), reverse=True)
    return indexes[quorum_size(voters) - 1]


def vote_result(voters: Sequence[NodeId], votes: Mapping[NodeId, bool]) -> bool | None:
    """True = won, False = lost, None = still undecided."""
    q = quorum_size(voters)
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    if granted >= q:
        return True
    if rejected > len(voters) - q:
        return False
    return None
