"""`raft.max_snapshot_bytes` reaches the node's transport; out-of-range values are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftkv.cli.serve import node_options
from raftkv.server.config import ConfigError
from tests.unit.server.test_server_config import SEED, load


def with_raft_key(line: str) -> str:
    return SEED.replace("heartbeat_timeout_ms: 25", f"heartbeat_timeout_ms: 25\n  {line}")


def test_default_and_explicit_snapshot_cap(tmp_path: Path) -> None:
    assert node_options(load(tmp_path)).max_snapshot_bytes == 8 << 30
    s = load(tmp_path, with_raft_key("max_snapshot_bytes: 2097152"))
    assert node_options(s).max_snapshot_bytes == 2 << 20


def test_snapshot_cap_below_one_mib_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"raft\.max_snapshot_bytes"):
        load(tmp_path, with_raft_key("max_snapshot_bytes: 1000"))
