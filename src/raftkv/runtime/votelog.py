"""Debug-level log lines for elections: every vote request this node answers and every vote
answer it receives, with the facts the outcome depended on.

Rules:
- Only RequestVote / RequestVoteResponse (elections are rare, so this costs nothing in steady
  state), only at debug level: a node run with `--log-level debug` shows why a candidate did or
  did not get a vote, and whether a grant reached a candidate still able to count it.
- The core decides; this module only reads its state before and after the step (never changes
  it) and states facts (term, vote, leader, lease promise, log positions, role), not reasons of
  its own, so it cannot drift from the rules in raft/raft.py.
"""

from __future__ import annotations

import structlog

from raftkv.raft.messages import AnyMessage, RequestVote, RequestVoteResponse
from raftkv.raft.raft import Raft
from raftkv.raft.rawnode import RawNode

log = structlog.get_logger("raftkv.runtime")


def _facts(raft: Raft) -> dict[str, object]:
    in_lease, lease_promised = raft.vote_facts()
    return {
        "term": int(raft.term),
        "role": raft.role.value,
        "vote": raft.vote,
        "leader": raft.leader,
        "last_index": int(raft.log.last_index()),
        "last_term": int(raft.log.last_term()),
        "heard_elapsed": raft.heard_elapsed,
        "lease_promised": lease_promised,
        "in_lease": in_lease,
    }


def step(node: str, raw: RawNode, msg: AnyMessage) -> None:
    """Step a vote message into `raw`, logging the request or answer at debug level."""
    raft = raw.raft
    before = _facts(raft)
    raw.step(msg)
    match msg:
        case RequestVote():
            answer = next(
                (
                    m
                    for m in reversed((*raft.persisted_msgs, *raft.msgs))
                    if isinstance(m, RequestVoteResponse) and m.to == msg.from_
                ),
                None,
            )
            log.debug(
                "vote request answered",
                node=node,
                candidate=msg.from_,
                cand_term=int(msg.term),
                cand_last_index=int(msg.last_log_index),
                cand_last_term=int(msg.last_log_term),
                pre_vote=msg.pre_vote,
                transfer=msg.transfer,
                granted=None if answer is None else answer.granted,  # None: ignored, no answer
                **{f"our_{k}": v for k, v in before.items()},
            )
        case RequestVoteResponse():
            log.debug(
                "vote answer received",
                node=node,
                voter=msg.from_,
                voter_term=int(msg.term),
                pre_vote=msg.pre_vote,
                granted=msg.granted,
                role_before=before["role"],
                term_before=before["term"],
                role_after=raft.role.value,
                term_after=int(raft.term),
            )
        case _:
            pass
