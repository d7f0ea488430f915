"""What the runtime needs to run one node, resolved by the caller (server/config.py builds it).

The runtime sits below `server/`, so it takes this plain record instead of the server's Settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from raftkv.raft.types import NodeId
from raftkv.transport.tls import PeerTls


@dataclass(frozen=True, slots=True)
class NodeOptions:
    node_id: NodeId
    cluster_name: str
    data_dir: Path  # this node's own directory
    raft_listen: tuple[str, int]  # where the peer listener binds
    raft_advertise: str  # "host:port" other nodes use
    http_advertise: str  # "host:port" clients and forwarding use
    peers_raft: dict[NodeId, tuple[str, int]]  # every node incl. self: id -> Raft address
    peers_http: dict[NodeId, str]  # every node incl. self: id -> HTTP "host:port"
    bootstrap_id: NodeId | None = None
    source_host: str | None = None  # bind outgoing connections here (partitions by address)
    tick_ms: float = 25.0  # the heartbeat interval is one tick
    election_ticks: int = 4
    lease_ticks: int = 0  # leader lease (raft/lease.py); 0: `consistency=lease` is ReadIndex
    snapshot_every: int = 100_000  # applied entries between automatic snapshots (etcd: 100k)
    snapshot_keep_entries: int = 1_000  # entries kept behind a snapshot for slow followers
    # raft.snapshot_builder: "process" builds snapshot files in a builder process (off this
    # process's GIL: runtime/snapshot_process.py), "thread" on the state-machine worker thread.
    snapshot_builder: Literal["process", "thread"] = "process"
    leader_wait_s: float = 2.0  # how long a request waits for a leader to appear
    request_timeout_s: float = 5.0  # proposals / reads not done by then: outcome unknown
    max_append_bytes: int = 4 << 20
    max_snapshot_bytes: int = 8 << 30  # raft.max_snapshot_bytes: larger inbound snapshots refused
    peer_tls: PeerTls | None = None  # tls.peer: mutual TLS between peers (None: plain TCP)
    # Client requests (proposals, ReadIndex reads) let into the core per event-loop turn: keeps
    # turns short under saturation so the tick still runs (runtime/admission.py).
    requests_per_turn: int = 64
    metrics: bool = True  # record Prometheus metrics (runtime/metrics.py)
    # Voters of the configuration the cluster started from; None: every node of peers_raft.
    # A node joining later gets it from the cluster (it replays the log from index 1).
    initial_voters: tuple[NodeId, ...] | None = None
    auto_promote: bool = True  # leader: promote learners (that asked for it) once caught up
    # (format, command set) claimed in the Hello and /cluster/local; None: what this code
    # understands (runtime/features.OWN_VERSIONS). Tests set less to play an older node.
    advertise_versions: tuple[int, int] | None = None
    # server.forward_over_peer: announce write forwarding over peer links (codec/forward.py)
    # in the Hello and offer the transport to the server (RaftKVNode.forward_link).
    peer_forwarding: bool = False
