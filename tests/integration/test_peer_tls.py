"""Mutual TLS between real nodes: a node with a certificate from another CA is refused (and the
log says why); its files are replaced and SIGHUP makes it re-read them: it joins, no restart."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from raftkv.transport.certs import CertLayout, init_certs
from tests.integration.cluster import NODE_IDS, Cluster, wait_for


class PeerTlsCluster(Cluster):
    """The integration cluster with `tls.peer` on files under <root>/live/<node id>/."""

    def config(self) -> dict[str, object]:
        conf = super().config()
        live = self.root / "live"
        conf["tls"] = {
            "peer": {
                "cert": f"{live}/{{node_id}}/peer.crt",
                "key": f"{live}/{{node_id}}/peer.key",
                "ca": f"{live}/{{node_id}}/ca.crt",
            }
        }
        return conf


def install(src: CertLayout, node: str, ca: CertLayout, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(src.peer_cert(node), dest / "peer.crt")
    shutil.copy(src.peer_key(node), dest / "peer.key")
    shutil.copy(ca.ca_cert, dest / "ca.crt")


def test_wrong_ca_refused_then_fixed_by_sighup(tmp_path: Path) -> None:
    good, other = CertLayout(tmp_path / "good"), CertLayout(tmp_path / "other")
    init_certs(good.root, list(NODE_IDS), ["localhost", "127.0.0.1"])
    init_certs(other.root, list(NODE_IDS), ["localhost", "127.0.0.1"])
    with PeerTlsCluster(tmp_path / "cluster") as c:
        live = c.root / "live"
        first, second, third = NODE_IDS
        for node in (first, second):
            install(good, node, good, live / node)
        install(other, third, good, live / third)  # trusts our CA, but its own cert is not ours
        c.start()
        leader = c.wait_ready([first, second])
        assert c.put(leader, "k", "v1").status == 200
        wait_for(
            "a refusal naming the CA",
            lambda: any(
                "not signed by the cluster CA" in c.nodes[n].log_text() for n in (first, second)
            ),
        )
        assert c.local(third)["leader_id"] in (None, third)  # it never heard from the leader

        install(good, third, good, live / third)
        proc = c.nodes[third].proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGHUP)
        wait_for("the reload", lambda: "tls_reloaded" in c.nodes[third].log_text())
        wait_for("node-3 to catch up", lambda: c.get(third, "k").json.get("value") == "v1")
        assert c.nodes[third].running
