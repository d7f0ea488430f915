"""`RawNode`: the public, synchronous API of the Raft core (etcd-io/raft's RawNode shape).

API (all synchronous, deterministic; time is `tick()`, randomness is the injected rng):
    RawNode(config, storage, rng)
    tick()                              one tick of logical time
    step(msg)                           a message from a peer (unknown/stale ones are ignored)
    propose(data) -> (term, index)      leader only; raises NotLeader / ProposalDropped
    propose_conf_change(cc) -> (term, index)
    read_index(ctx)                     result arrives as a ReadState in a later Ready
    campaign()                          start an election now
    transfer_leader(to)                 thesis §3.10
    report_unreachable(id), report_snapshot(id, ok)
    has_ready() / ready() / advance(ready)
    status() -> Status
This file is a stub until the core lands; the signatures are the contract.
"""
