"""`raft.max_snapshot_bytes` is derived from `storage.quota_bytes` unless set, and an explicit value
too small for a snapshot of a full store is refused at load, saying what to do (issue 10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftkv.server.config import ConfigError
from tests.unit.server.test_server_config import SEED, load


def config(raft: str = "", storage: str = "") -> str:
    text = SEED
    if raft:
        text = text.replace("heartbeat_timeout_ms: 25", f"heartbeat_timeout_ms: 25\n  {raft}")
    if storage:
        text += f"storage:\n  {storage}\n"
    return text


def test_derived_from_the_quota_with_room_for_history(tmp_path: Path) -> None:
    assert load(tmp_path).max_snapshot_bytes == 2 * (2 << 30) + (1 << 30)  # default 2 GiB quota
    assert load(tmp_path, config(storage="quota_bytes: 104857600")).max_snapshot_bytes == (
        2 * 104857600 + (1 << 30)
    )
    assert load(tmp_path, config(storage="quota_bytes: 0")).max_snapshot_bytes == 8 << 30


def test_explicit_value_is_kept_when_it_fits(tmp_path: Path) -> None:
    text = config(raft="max_snapshot_bytes: 4294967296")  # exactly twice the default quota
    assert load(tmp_path, text).max_snapshot_bytes == 4 << 30


def test_explicit_value_below_twice_the_quota_is_refused(tmp_path: Path) -> None:
    text = config(raft="max_snapshot_bytes: 1073741824")  # 1 GiB with the 2 GiB default quota
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    words = str(info.value)
    assert words.startswith("raft.max_snapshot_bytes: 1073741824 is below twice storage.quota")
    assert "at least 4294967296" in words and "derived: 5368709120" in words
    # Lowering the quota makes the same value valid.
    assert (
        load(
            tmp_path, config(raft="max_snapshot_bytes: 1073741824", storage="quota_bytes: 1000")
        ).max_snapshot_bytes
        == 1 << 30
    )
