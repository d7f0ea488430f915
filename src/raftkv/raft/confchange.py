"""Pure configuration arithmetic shared by the core and the runtime (thesis §4.1)."""

from __future__ import annotations

from raftkv.raft.types import ConfChange, ConfChangeKind, ConfState


def conf_after(conf: ConfState, cc: ConfChange) -> ConfState:
    """The configuration that results from applying `cc` to `conf`.

    Removing the last voter is refused at proposal time; if it ever arrives, `conf` is kept.
    """
    voters = set(conf.voters)
    learners = set(conf.learners)
    match cc.kind:
        case ConfChangeKind.ADD_VOTER:
            learners.discard(cc.node_id)
            voters.add(cc.node_id)
        case ConfChangeKind.ADD_LEARNER:
            if cc.node_id not in voters:
                learners.add(cc.node_id)
        case ConfChangeKind.REMOVE_NODE:
            voters.discard(cc.node_id)
            learners.discard(cc.node_id)
    if not voters:
        return conf
    return ConfState(tuple(sorted(voters)), tuple(sorted(learners)))
