"""The replicated membership record: who the members are and where to reach them.

Rules:
- The Raft core knows members by id only (`ConfState`). Their addresses live here, in a
  `ClusterRecord` that the state machine stores next to the `ConfState` in the same transaction
  and that travels in snapshots (`SnapshotHeader.cluster`). It is opaque to storage.
- It changes only by applying a committed conf-change entry (`record_after`), whose `context`
  carries the new member's addresses (`MemberContext`), so every node derives the same record
  from the same log. At bootstrap it is the configured `nodes` (the initial configuration, like
  etcd's `--initial-cluster`); after that the replicated record wins over any YAML file.
- `initial` keeps the voters of the bootstrap configuration: a node that joins later replays the
  log from index 1 and must start from the same configuration the cluster started from.
- `removed` ids are never members again (etcd's rule for removed member ids): a node removed
  while it was down cannot come back with its old log, and a new node must use a new id.
- Ids iterate sorted (ARCHITECTURE.md §5); encoding is msgspec msgpack, never pickle.
"""

from __future__ import annotations

import msgspec

from raftkv.raft.types import ConfChange, ConfChangeKind, ConfState, NodeId


class MemberInfo(msgspec.Struct, frozen=True, gc=False):
    raft_address: str  # "host:port" peers dial
    http_address: str  # "host:port" clients and forwarding use
    auto_promote: bool = True  # a learner the leader promotes to voter once caught up


class MemberContext(msgspec.Struct, frozen=True, gc=False):
    """`ConfChange.context` of an ADD_LEARNER / ADD_VOTER entry."""

    raft_address: str = ""
    http_address: str = ""
    auto_promote: bool = True


class ClusterRecord(msgspec.Struct, frozen=True, gc=False):
    members: dict[str, MemberInfo] = {}
    initial: tuple[str, ...] = ()  # voters of the bootstrap configuration, sorted
    removed: tuple[str, ...] = ()  # ids removed for good, sorted

    def raft_addresses(self) -> dict[NodeId, tuple[str, int]]:
        return {NodeId(n): split_host_port(m.raft_address) for n, m in sorted(self.members.items())}

    def http_addresses(self) -> dict[str, str]:
        return {n: m.http_address for n, m in sorted(self.members.items())}


_encoder = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(ClusterRecord)
_context_decoder = msgspec.msgpack.Decoder(MemberContext)


def encode_record(record: ClusterRecord) -> bytes:
    return _encoder.encode(record)


def decode_record(data: bytes) -> ClusterRecord:
    return _record_decoder.decode(data)


def encode_context(ctx: MemberContext) -> bytes:
    return _encoder.encode(ctx)


def decode_context(data: bytes) -> MemberContext:
    """The addresses carried by a conf change; an empty or foreign context gives empty ones."""
    if not data:
        return MemberContext()
    try:
        return _context_decoder.decode(data)
    except msgspec.DecodeError:
        return MemberContext()


def bootstrap_record(
    raft: dict[NodeId, tuple[str, int]], http: dict[NodeId, str], initial: tuple[NodeId, ...]
) -> ClusterRecord:
    """The record a node starts from before any conf change: the configured nodes."""
    members = {
        str(n): MemberInfo(join_host_port(addr), http.get(n, ""))
        for n, addr in sorted(raft.items())
    }
    return ClusterRecord(members=members, initial=tuple(sorted(initial)))


def record_after(record: ClusterRecord, cc: ConfChange, conf: ConfState) -> ClusterRecord:
    """The record once `cc` is applied; `conf` is the configuration it produced."""
    members = dict(record.members)
    removed = set(record.removed)
    node = str(cc.node_id)
    match cc.kind:
        case ConfChangeKind.ADD_LEARNER | ConfChangeKind.ADD_VOTER:
            ctx = decode_context(cc.context)
            old = members.get(node)
            if ctx.raft_address:
                members[node] = MemberInfo(ctx.raft_address, ctx.http_address, ctx.auto_promote)
            elif old is None:
                members[node] = MemberInfo("", "", ctx.auto_promote)
        case ConfChangeKind.REMOVE_NODE:
            if node in conf.all_nodes():
                return record  # refused by conf_after (the last voter): nothing changed
            members.pop(node, None)
            removed.add(node)
    # Keep only what the configuration holds (plus addresses of ids it does not know yet would
    # be stale): the record and the ConfState describe the same members.
    live = set(conf.all_nodes())
    members = {n: m for n, m in sorted(members.items()) if n in live}
    return ClusterRecord(members=members, initial=record.initial, removed=tuple(sorted(removed)))


def split_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port) if port.isdigit() else 0


def join_host_port(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
