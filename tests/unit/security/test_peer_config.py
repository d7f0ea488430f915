"""`raft.max_snapshot_bytes` reaches the node's transport (out-of-range values are refused);
SIGHUP's reload of the `tls.peer` files."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from raftkv.cli.serve import node_options, reload_peer_tls
from raftkv.server.config import ConfigError
from raftkv.transport.certs import CertLayout, init_certs
from raftkv.transport.tls import PeerTls, TlsFiles
from tests.unit.server.test_server_config import SEED, load


def with_raft_key(line: str) -> str:
    return SEED.replace("heartbeat_timeout_ms: 25", f"heartbeat_timeout_ms: 25\n  {line}")


def test_default_and_explicit_snapshot_cap(tmp_path: Path) -> None:
    # Derived from the default 2 GiB quota (tests/unit/server/test_snapshot_cap.py).
    assert node_options(load(tmp_path)).max_snapshot_bytes == 5 << 30
    no_quota = "logging:\n  level: info\nstorage:\n  quota_bytes: 0\n"
    s = load(
        tmp_path,
        with_raft_key("max_snapshot_bytes: 2097152").replace(
            'logging:\n  level: "info"\n', no_quota
        ),
    )
    assert node_options(s).max_snapshot_bytes == 2 << 20


def test_snapshot_cap_below_one_mib_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"raft\.max_snapshot_bytes"):
        load(tmp_path, with_raft_key("max_snapshot_bytes: 1000"))


def test_sighup_reload_keeps_the_old_files_on_error(tmp_path: Path) -> None:
    init_certs(tmp_path / "c", ["node-1"], ["localhost"])
    layout = CertLayout(tmp_path / "c")
    files = TlsFiles(layout.peer_cert("node-1"), layout.peer_key("node-1"), layout.ca_cert)
    tls = PeerTls(files)
    with structlog.testing.capture_logs() as logs:
        assert reload_peer_tls(tls)
        assert not reload_peer_tls(None)
        server = tls.server
        layout.peer_key("node-1").write_bytes(b"not a key")
        assert not reload_peer_tls(tls)
    assert tls.server is server
    events = [e["event"] for e in logs]
    assert events == ["tls_reloaded", "tls_reload_skipped", "tls_reload_failed"]
    assert "peer.key" in logs[2]["error"]
