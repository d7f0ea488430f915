"""The driver admits peers by the core's LIVE configuration, not by the YAML file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

from raftkv.raft.types import ConfState, NodeId
from raftkv.runtime.driver import RaftDriver
from raftkv.runtime.options import NodeOptions
from raftkv.transport.certs import CertLayout, init_certs
from raftkv.transport.tls import PeerTls, TlsFiles

N1, N2, N3, N4 = (NodeId(f"node-{i}") for i in range(1, 5))


def driver(node: NodeId, conf: ConfState, yaml_nodes: tuple[NodeId, ...]) -> RaftDriver:
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
    d.raw = SimpleNamespace(raft=SimpleNamespace(conf=conf))  # type: ignore[assignment]
    return d


def test_members_added_later_are_admitted_removed_ones_refused() -> None:
    # YAML says node-1..3; the live configuration has since added node-4 and removed node-3.
    d = driver(N1, ConfState(voters=(N1, N2), learners=(N4,)), (N1, N2, N3))
    assert d._is_member(N2)
    assert d._is_member(N4)  # not in the YAML, but a member now
    assert not d._is_member(N3)  # in the YAML, but removed
    assert not d._is_member(NodeId("mallory"))


def test_a_joining_node_admits_its_configured_peers() -> None:
    # node-4 starts with an empty log: its configuration does not name it yet.
    d = driver(N4, ConfState(voters=(N1, N2, N3)), (N1, N2, N3, N4))
    assert d._is_member(N1)
    assert not d._is_member(NodeId("mallory"))


def test_with_peer_tls_an_unknown_certified_id_is_admitted_unless_seen_removed(
    tmp_path: Path,
) -> None:
    """A node that missed conf changes must let a leader added meanwhile catch it up: under
    mutual TLS the certificate proves the id, so an id it does not know gets in; one whose
    removal it saw committed does not. Without TLS (above) unknown ids stay out."""
    init_certs(tmp_path, ["node-1"], ["localhost"])
    layout = CertLayout(tmp_path)
    tls = PeerTls(TlsFiles(layout.peer_cert("node-1"), layout.peer_key("node-1"), layout.ca_cert))
    d = driver(N1, ConfState(voters=(N1, N2, N3)), (N1, N2, N3))
    d.opts = dataclasses.replace(d.opts, peer_tls=tls)
    assert d._is_member(N4)  # added after what we applied: may be the leader
    d._removed.add(N4)
    assert not d._is_member(N4)
    assert d._is_member(N2)
