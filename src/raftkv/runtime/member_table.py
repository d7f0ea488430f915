"""The driver's view of the membership record: seeding it, adopting changes, removed peers.

Rules:
- `MemberTable` holds the applied `ClusterRecord` (runtime/members.py) and what follows from
  it for the transport: every change is adopted with `adopt()`, which dials new members and
  forgets removed ones. Only the driver's loop thread touches it.
- The initial configuration comes from the stored record once there is one (it never changes
  after bootstrap); before that from `NodeOptions.initial_voters` (a joining node) or the
  configured nodes.
- Peer connections and messages: any id but a removed one is accepted. A node that lags
  behind a conf change (restarted, partitioned, joining) does not know the members added since,
  and one of them may be the leader it must catch up from: refusing unknown ids would strand
  it for good. A removed id never comes back, so refusing those is exact; with mutual TLS the
  certificate proves the id.
- A node that lags behind conf changes may also be unable to ANSWER a leader added since (its
  record has no address for it), and without peer TLS the driver refuses a Hello from an id it
  does not know. So members another member's record lists, and that ours does not (neither as
  a member nor as removed), are `vouched` for (`vouch`, from the removal watch that asks the
  others -- and the `--join` URL a restart names, whose record must list this node -- while no
  leader is known, server/members_routes.py): admitted and dialled at the
  address that record gives, until our own record catches up (`adopt` forgets them). Without
  that, such a member stays at its old configuration forever, missing every later write (issue
  13's chaos run: an original member at `cluster_size` 4 of 3, 99 acknowledged writes missing).
- Messages from removed ids are refused (etcd answers such a member 410 Gone) and logged at
  most every `REFUSAL_LOG_S` per peer; `heard` keeps the loop time of each member's last
  message (the leader's health view, runtime/membership.py) and `leading_since` when this node
  last became leader (how long that view has been complete).
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

import structlog

from raftkv.raft.types import ConfState, NodeId
from raftkv.runtime.members import (
    ClusterRecord,
    MemberInfo,
    bootstrap_record,
    decode_record,
    encode_record,
    split_host_port,
)
from raftkv.runtime.options import NodeOptions
from raftkv.storage.state import StateMachine

log = structlog.get_logger("raftkv.runtime")

REFUSAL_LOG_S: Final = 10.0


class NodeRemoved(Exception):
    """This node was removed from the cluster (it applied its own removal, another member says
    so, or it finds itself in the record's `removed` ids at start): it stops, and never rejoins
    under this id."""


class _Dialer(Protocol):
    def update_peer(self, node_id: NodeId, addr: tuple[str, int]) -> None: ...

    def remove_peer(self, node_id: NodeId) -> None: ...


def initial_conf(stored: bytes, opts: NodeOptions) -> ConfState:
    """The configuration the cluster started from."""
    if stored:
        initial = decode_record(stored).initial
        if initial:
            return ConfState(voters=tuple(NodeId(n) for n in initial))
    voters = opts.initial_voters or tuple(opts.peers_raft)
    return ConfState(voters=tuple(sorted(voters)))


async def load_record(sm: StateMachine, opts: NodeOptions, initial: ConfState) -> ClusterRecord:
    """The state's record, reconciled with its configuration (stored back when corrected)."""
    stored = decode_record(sm.cluster) if sm.cluster else None
    record = reconcile(stored, opts, initial, sm.conf)
    if record != stored:
        await asyncio.to_thread(sm.set_conf, sm.conf, encode_record(record))
    return record


def reconcile(
    stored: ClusterRecord | None, opts: NodeOptions, initial: ConfState, live: ConfState
) -> ClusterRecord:
    """The record to run with, given the configuration in force (`live`, from the state).

    Normally the stored record as is. It is built from the configured nodes on a first start
    (or data from before the record existed), and corrected where the state's configuration was
    rewritten offline (`raftkv snapshot restore --initial-cluster`, `--force-new-cluster`): the
    configuration wins -- members it does not hold are dropped, an id it holds is not removed,
    and a member without an address gets the configured one."""
    seed = bootstrap_record(opts.peers_raft, opts.peers_http, initial.voters)
    record = stored or seed
    nodes = set(live.all_nodes())
    members = {n: m for n, m in record.members.items() if n in nodes}
    for n in sorted(nodes - set(members)):
        if n in seed.members:
            members[n] = seed.members[n]
    removed = tuple(r for r in record.removed if r not in nodes)
    return ClusterRecord(dict(sorted(members.items())), record.initial or seed.initial, removed)


class MemberTable:
    def __init__(self, node_id: NodeId) -> None:
        self.id = node_id
        self.record = ClusterRecord()
        self.removed: frozenset[str] = frozenset()  # = record.removed, for a fast check
        self.heard: dict[NodeId, float] = {}  # member -> loop time of its last message
        # Loop time this node last became leader: before that it heard only from its leader,
        # so its `heard` says little about the others until a health window has passed.
        self.leading_since = 0.0
        # Members a current member's record lists and ours does not hold yet (module rules);
        # never one of ours nor a removed id.
        self.vouched: dict[str, MemberInfo] = {}
        self._refusals_logged: dict[str, float] = {}

    def accepts(self, node: str) -> bool:
        """May `node` connect to us (the transport's Hello check)? Any id but a removed one."""
        return node not in self.removed

    def load(self, record: ClusterRecord, *, start: bool = False) -> None:
        self.record = record
        self.removed = frozenset(record.removed)
        if start and self.id in self.removed:
            raise NodeRemoved(
                f"node {self.id} was removed from the cluster; it cannot rejoin under this id "
                "(start a new node with a new id and an empty data directory)"
            )

    def dial_map(self, configured: dict[NodeId, tuple[str, int]]) -> dict[NodeId, tuple[str, int]]:
        """Whom the transport dials at start: the record's addresses; configured ones fill gaps."""
        peers = {**configured, **self.record.raft_addresses()}
        return {n: a for n, a in peers.items() if n != self.id and a[1]}

    def vouch(
        self, source: str, members: dict[str, MemberInfo], removed: set[str], transport: _Dialer
    ) -> list[str]:
        """`source` (a member we know) lists `members` and `removed`: admit and dial those
        members that our record does not know yet. Returns the ids newly vouched for."""
        new = []
        for node, info in sorted(members.items()):
            known = node in self.record.members or node in self.removed
            if node == self.id or known or node in removed or self.vouched.get(node) == info:
                continue
            host, port = split_host_port(info.raft_address)
            if not port:
                continue
            self.vouched[node] = info
            transport.update_peer(NodeId(node), (host, port))
            new.append(node)
        if new:
            log.info("members learned from a peer's record", node=self.id, src=source, ids=new)
        return new

    def adopt(self, record: ClusterRecord, transport: _Dialer, conf: ConfState) -> bool:
        """Take a new record; returns True if it says this node was removed."""
        old = self.record
        self.load(record)
        for node in sorted(self.vouched):
            if node in record.members:
                del self.vouched[node]  # our own record holds it now
            elif node in record.removed:
                del self.vouched[node]
                transport.remove_peer(NodeId(node))
        if old == record:
            return False
        for node, addr in record.raft_addresses().items():
            if node != self.id and addr[1]:
                transport.update_peer(node, addr)
        for gone in old.members:
            if gone not in record.members and gone != self.id:
                transport.remove_peer(NodeId(gone))
                self.heard.pop(NodeId(gone), None)
        log.info(
            "membership changed",
            node=self.id,
            voters=list(conf.voters),
            learners=list(conf.learners),
        )
        return self.id in record.removed

    def refuse(self, node: NodeId, now: float) -> None:
        """A message from a removed node arrived (and is dropped): log it, rate-limited."""
        last = self._refusals_logged.get(node)
        if last is None or now - last >= REFUSAL_LOG_S:
            self._refusals_logged[node] = now
            log.warning("refused a message from a removed node", node=self.id, peer=node)
