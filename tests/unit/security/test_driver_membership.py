"""The driver admits peers by the replicated membership record, not by the YAML file.

A removed id is refused (it never comes back: runtime/members.py). An id this node does not
know is admitted: a node that lags behind a conf change (restarted, partitioned, joining) does
not know the members added since, and one of them may be the leader it must catch up from.
Without TLS an impostor could claim a known id anyway; with mutual TLS its certificate must
prove the id (`transport/tls.py`), so admitting unknown ids costs no protection.
"""

from __future__ import annotations

from pathlib import Path

from raftkv.raft.types import NodeId
from raftkv.runtime.driver import RaftDriver
from raftkv.runtime.members import ClusterRecord, MemberInfo
from raftkv.runtime.options import NodeOptions

N1, N2, N3, N4, N5 = (NodeId(f"node-{i}") for i in range(1, 6))


def driver(node: NodeId, record: ClusterRecord, yaml_nodes: tuple[NodeId, ...]) -> RaftDriver:
    opts = NodeOptions(
        node_id=node,
        cluster_name="c",
        data_dir=Path("/nonexistent"),
        raft_listen=("127.0.0.1", 0),
        raft_advertise="127.0.0.1:0",
        http_advertise="127.0.0.1:0",
        peers_raft={n: ("127.0.0.1", 1) for n in yaml_nodes},
        peers_http={n: "127.0.0.1:1" for n in yaml_nodes},
    )
    d = RaftDriver(opts)
    d.table.load(record)
    return d


def test_members_added_later_are_admitted_removed_ones_refused() -> None:
    # YAML says node-1..3; the cluster has since added node-4 and removed node-3.
    info = MemberInfo("127.0.0.1:1", "127.0.0.1:2")
    record = ClusterRecord({N1: info, N2: info, N4: info}, (N1, N2, N3), (N3,))
    d = driver(N1, record, (N1, N2, N3))
    assert d.table.accepts(N2)
    assert d.table.accepts(N4)  # not in the YAML, but a member now
    assert not d.table.accepts(N3)  # in the YAML, but removed
    assert d.table.accepts(N5)  # added after what this node has applied: may be the leader


def test_a_joining_node_admits_its_configured_peers() -> None:
    # node-4 starts with an empty log: its record does not name it yet.
    info = MemberInfo("127.0.0.1:1", "127.0.0.1:2")
    d = driver(N4, ClusterRecord({N1: info, N2: info, N3: info}, (N1, N2, N3)), (N1, N2, N3, N4))
    assert d.table.accepts(N1)
