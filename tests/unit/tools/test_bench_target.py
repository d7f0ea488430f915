"""`raftkv bench --target`: which member a run loads."""

from __future__ import annotations

import pytest

from raftkv.bench.wrk import LoadError
from raftkv.cli.bench_cmd import Target, pick_target

MEMBERS = {"node-1": "127.0.0.1:1", "node-2": "127.0.0.1:2", "node-3": "127.0.0.1:3"}


def test_leader_target_is_the_leader() -> None:
    assert pick_target(MEMBERS, "node-2", Target.leader) == "node-2"


def test_follower_target_is_never_the_leader_and_is_stable() -> None:
    assert pick_target(MEMBERS, "node-1", Target.follower) == "node-2"
    assert pick_target(MEMBERS, "node-2", Target.follower) == "node-1"


def test_follower_target_needs_a_follower() -> None:
    with pytest.raises(LoadError, match="follower"):
        pick_target({"node-1": "127.0.0.1:1"}, "node-1", Target.follower)
