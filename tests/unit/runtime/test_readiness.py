"""Readiness' apply condition (runtime/node.py `caught_up`): a follower a loop turn behind its
commit index is ready; one replaying a backlog is not."""

from __future__ import annotations

from raftkv.runtime.node import READY_APPLY_LAG, caught_up


def test_a_follower_one_apply_pass_behind_is_ready() -> None:
    assert caught_up(commit=120, applied=120)
    assert caught_up(commit=120, applied=57)  # a loaded follower: commit learned, not applied
    assert caught_up(commit=READY_APPLY_LAG + 7, applied=7)


def test_a_node_replaying_a_backlog_is_not_ready() -> None:
    assert not caught_up(commit=READY_APPLY_LAG + 8, applied=7)
    assert not caught_up(commit=50_000, applied=0)
