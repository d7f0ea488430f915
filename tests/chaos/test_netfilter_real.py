"""The firewall against the real nftables: a cut link blocks exactly the cluster's traffic."""

from __future__ import annotations

import socket
import subprocess

from raftkv.chaos.netfilter import Endpoint, Firewall
from tests.chaos.chaos_helpers import needs_nft


def can_connect(src: str, dst: tuple[str, int]) -> bool:
    with socket.socket() as s:
        s.bind((src, 0))
        s.settimeout(0.3)
        try:
            s.connect(dst)
        except OSError:
            return False
        return True


@needs_nft
def test_cut_heal_and_cleanup() -> None:
    with socket.socket() as listener, socket.socket() as other:
        listener.bind(("127.0.0.3", 0))
        listener.listen(16)
        other.bind(("127.0.0.3", 0))  # same host, a port outside the cluster
        other.listen(16)
        port, other_port = listener.getsockname()[1], other.getsockname()[1]
        a = Endpoint("127.0.0.2", (1,))
        b = Endpoint("127.0.0.3", (port,))
        fw = Firewall()
        fw.open()
        try:
            assert can_connect("127.0.0.2", ("127.0.0.3", port))
            fw.cut([(a, b)])
            assert not can_connect("127.0.0.2", ("127.0.0.3", port))
            assert can_connect("127.0.0.2", ("127.0.0.3", other_port))  # not the cluster's port
            assert can_connect("127.0.0.10", ("127.0.0.3", port))  # not a node's address
            assert f"dport {port}" in fw.listing()
            fw.heal()
            assert can_connect("127.0.0.2", ("127.0.0.3", port))
        finally:
            fw.close()
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        assert fw.table not in tables
