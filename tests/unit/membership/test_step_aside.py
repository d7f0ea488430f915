"""Removing the leader: it hands leadership over first (runtime/membership.py `_step_aside`).

- The removal then goes to whichever node leads: the chosen target, or another voter that won
  an ordinary election after the transfer failed (thesis §3.10 allows the failure; what was
  asked for is the removal, as etcd's and Consul's leaders remove themselves).
- If no other node leads in time: `TransferFailed` (503, Retry-After; nothing changed).
- An explicit transfer (`POST /cluster/leader`) stays strict: another leader is a failure.
- The new leader's quorum check: it heard only from its own leader while a follower, so for a
  health window after taking over it waits for the others' answers before refusing a change
  with `WouldLoseQuorum` (seen: a removal handed over right after the election was refused).

A scripted driver stands in for the real one: `transfer_leader` records the call and lets the
test decide who leads next, as the cluster would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from raftkv.raft.types import ConfState, NodeId, Role
from raftkv.runtime.api import NotLeaderError
from raftkv.runtime.driver import RaftDriver
from raftkv.runtime.membership import MembershipManager, TransferFailed, WouldLoseQuorum
from tests.unit.server.fakes import aio

N1, N2, N3 = (NodeId(f"node-{i}") for i in range(1, 4))
HTTP = {N1: "h1:8081", N2: "h2:8082", N3: "h3:8083"}


@dataclass
class _Progress:
    match: int


@dataclass
class _Raft:
    role: Role = Role.LEADER
    lead_transferee: NodeId | None = None
    conf: ConfState = field(default_factory=lambda: ConfState((N1, N2, N3)))
    # n3 is the most up to date: the step-aside picks it
    progress: dict[NodeId, _Progress] = field(
        default_factory=lambda: {N1: _Progress(9), N2: _Progress(8), N3: _Progress(9)}
    )


@dataclass
class _Opts:
    election_ticks: int = 4
    tick_ms: int = 25


class _Record:
    members: dict[str, object] = {}
    removed: tuple[str, ...] = ()

    def http_addresses(self) -> dict[NodeId, str]:
        return HTTP


class _Table:
    def __init__(self) -> None:
        self.record = _Record()
        self.heard: dict[NodeId, float] = {}
        self.leading_since = 0.0


class _Raw:
    def __init__(self, on_transfer: Callable[[_Raw, NodeId], None]) -> None:
        self.raft = _Raft()
        self.leader: NodeId | None = N1
        self.transfers: list[NodeId] = []
        self._on_transfer = on_transfer

    def transfer_leader(self, to: NodeId) -> None:
        self.transfers.append(to)
        self.raft.lead_transferee = to
        self._on_transfer(self, to)


class _Driver:
    def __init__(self, on_transfer: Callable[[_Raw, NodeId], None]) -> None:
        self.id = N1
        self.opts = _Opts()
        self.raw = _Raw(on_transfer)
        self.table = _Table()

    def poke(self) -> None:
        pass


def _manager(on_transfer: Callable[[_Raw, NodeId], None]) -> tuple[MembershipManager, _Driver]:
    d = _Driver(on_transfer)
    now = asyncio.get_running_loop().time()
    d.table.heard = {N2: now, N3: now}  # every peer healthy
    return MembershipManager(cast(RaftDriver, d)), d


def _another_wins(winner: NodeId) -> Callable[[_Raw, NodeId], None]:
    """The target campaigns and loses; `winner` is elected; we follow it."""

    def lost(raw: _Raw, _to: NodeId) -> None:
        raw.raft.role = Role.FOLLOWER
        raw.raft.lead_transferee = None
        raw.leader = winner

    return lost


@aio
async def test_step_aside_hands_the_removal_to_the_target_once_it_leads() -> None:
    def target_wins(raw: _Raw, to: NodeId) -> None:
        raw.raft.role, raw.raft.lead_transferee, raw.leader = Role.FOLLOWER, None, to

    m, d = _manager(target_wins)
    with pytest.raises(NotLeaderError) as err:
        await m._step_aside()
    assert d.raw.transfers == [N3]
    assert (err.value.leader_id, err.value.leader_http) == (N3, HTTP[N3])


@aio
async def test_step_aside_hands_the_removal_to_another_voter_that_won_instead() -> None:
    m, d = _manager(_another_wins(N2))
    with pytest.raises(NotLeaderError) as err:
        await m._step_aside()
    assert d.raw.transfers == [N3]
    assert (err.value.leader_id, err.value.leader_http) == (N2, HTTP[N2])


@aio
async def test_step_aside_fails_retryably_when_no_other_node_leads_in_time() -> None:
    def nobody_comes(raw: _Raw, _to: NodeId) -> None:
        raw.raft.lead_transferee = None  # each attempt times out; we stay the leader

    m, d = _manager(nobody_comes)
    with pytest.raises(TransferFailed):
        await m._step_aside()
    assert len(d.raw.transfers) > 1  # asked again after each failed attempt
    assert set(d.raw.transfers) == {N3}


@aio
async def test_explicit_transfer_fails_when_another_voter_wins() -> None:
    m, _ = _manager(_another_wins(N2))
    with pytest.raises(TransferFailed) as err:
        await m.transfer(N3)
    assert cast(dict[str, Any], err.value.context)["leader"] == N2


def _stay(_raw: _Raw, _to: NodeId) -> None:
    pass


@aio
async def test_a_new_leader_waits_for_its_health_view_before_refusing_a_change() -> None:
    m, d = _manager(_stay)
    loop = asyncio.get_running_loop()
    d.table.heard = {}  # as a follower it heard only from its leader (gone)
    d.table.leading_since = loop.time()  # just elected

    async def answers() -> None:  # the others answer its first heartbeats
        await asyncio.sleep(0.05)
        d.table.heard[N2] = loop.time()

    task = asyncio.create_task(answers())
    await m._check_quorum_after((N1, N2, N3), "removing")  # 2 of 3 healthy: allowed
    await task


@aio
async def test_a_leader_with_a_complete_view_refuses_at_once() -> None:
    m, d = _manager(_stay)
    loop = asyncio.get_running_loop()
    d.table.heard = {}
    d.table.leading_since = loop.time() - 10.0  # leading for long: its view is complete
    start = loop.time()
    with pytest.raises(WouldLoseQuorum):
        await m._check_quorum_after((N1, N2, N3), "removing")
    assert loop.time() - start < 0.05


@aio
async def test_a_new_leader_refuses_once_its_health_window_has_passed() -> None:
    m, d = _manager(_stay)
    loop = asyncio.get_running_loop()
    d.table.heard = {}
    d.table.leading_since = loop.time()
    start = loop.time()
    with pytest.raises(WouldLoseQuorum):
        await m._check_quorum_after((N1, N2, N3), "removing")
    window = 3 * d.opts.election_ticks * d.opts.tick_ms / 1000
    assert loop.time() - start >= window - 0.03
