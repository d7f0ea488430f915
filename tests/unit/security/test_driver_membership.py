"""The driver admits peers by the replicated membership record, not by the YAML file.

A removed id is refused (it never comes back: runtime/members.py). An id this node does not
know (a node that lags behind a conf change does not know the members added since, and one of
them may be the leader it must catch up from) is admitted only under mutual TLS, where its
certificate must prove the id (`transport/tls.py`); without TLS it is refused, or anyone could
claim a made-up id (`mallory`, issue 10).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from raftkv.raft.types import NodeId
from raftkv.runtime.driver import RaftDriver
from raftkv.runtime.members import ClusterRecord, MemberInfo
from raftkv.runtime.options import NodeOptions
from raftkv.transport.certs import CertLayout, init_certs
from raftkv.transport.tls import PeerTls, TlsFiles

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


def test_unknown_ids_need_peer_tls(tmp_path: Path) -> None:
    info = MemberInfo("127.0.0.1:1", "127.0.0.1:2")
    record = ClusterRecord({N1: info, N2: info, N4: info}, (N1, N2, N3), (N3,))
    d = driver(N1, record, (N1, N2, N3))
    assert d._admits(N2) and d._admits(N4)
    assert not d._admits(N3)  # removed
    assert not d._admits(N5)  # unknown, and nothing proves who it is
    assert not d._admits(NodeId("mallory"))
    init_certs(tmp_path, ["node-1"], ["localhost"])
    layout = CertLayout(tmp_path)
    tls = PeerTls(TlsFiles(layout.peer_cert("node-1"), layout.peer_key("node-1"), layout.ca_cert))
    d.opts = dataclasses.replace(d.opts, peer_tls=tls)
    assert d._admits(N5)  # its certificate must name node-5: it may be a newer leader
    assert not d._admits(N3)  # removed stays removed, certificate or not
