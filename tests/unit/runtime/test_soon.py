"""`RaftKVNode`'s calls without a coroutine (runtime/soon.py, api.SoonNode) on a real 3-node
cluster: the same results and refusals as `write`/`read`, MustWait whenever the coroutine
would wait, and the coroutine's exceptions after the future completed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from raftkv.kv.commands import OpenSession, Put, PutResult
from raftkv.kv.mvcc import MVCCStore
from raftkv.raft.types import NodeId, Role
from raftkv.runtime.api import (
    MustWait,
    NodeStopping,
    NoLeaderError,
    OperationTimeout,
    RetryWrite,
    SoonNode,
)
from raftkv.runtime.node import RaftKVNode
from raftkv.runtime.waiters import ProposalLost, deadlines
from tests.unit.runtime.test_features import _options, _ports, _until
from tests.unit.server.fakes import aio


def _value(key: str) -> object:
    def read(store: MVCCStore) -> object:
        kv = store.get(key)
        return None if kv is None else kv.value

    return read


@asynccontextmanager
async def three_nodes(tmp_path: Path) -> AsyncIterator[dict[NodeId, RaftKVNode]]:
    """Three started RaftKVNodes that all know the same leader; stopped at the end."""
    ids = [NodeId("n1"), NodeId("n2"), NodeId("n3")]
    ports = dict(zip(ids, _ports(3), strict=True))
    nodes = {n: RaftKVNode(_options(tmp_path, ports, n)) for n in ids}
    try:
        for node in nodes.values():
            await node.start()

        def agreed() -> bool:
            leaders = {node.driver.status().leader for node in nodes.values()}
            return len(leaders) == 1 and None not in leaders

        await _until("a leader every node knows", agreed)
        yield nodes
    finally:
        for node in nodes.values():
            await node.stop()


@aio
async def test_soon_calls_answer_as_the_coroutines(tmp_path: Path) -> None:
    async with three_nodes(tmp_path) as nodes:
        lead = next(n for n in nodes.values() if n.driver.status().role is Role.LEADER)
        follower = next(n for n in nodes.values() if n is not lead)
        assert isinstance(lead, SoonNode)

        # A write on the leader: proposed at once, its result from the future.
        fut = lead.write_soon(Put("k", "v1"))
        await asyncio.wait([fut])
        result = lead.write_settled(fut)
        assert isinstance(result, PutResult)
        assert lead.read_applied(_value("k")) == "v1"
        assert len(deadlines()) == 0  # its coarse deadline went with it

        # Linearizable reads on the leader and on a follower (ReadIndex via the leader).
        for node in (lead, follower):
            fence = node.read_soon(linearizable=True)
            assert fence is not None
            await asyncio.wait([fence])
            node.read_settled(fence)
            assert node.read_applied(_value("k")) == "v1"
        assert follower.read_soon(linearizable=False) is None  # stale: read now

        # What only the coroutine can do: MustWait, nothing proposed.
        last = lead.driver.raw.status().last_index
        with pytest.raises(MustWait):
            follower.write_soon(Put("k", "v2"))  # forwarded by the server, or NotLeader
        with pytest.raises(MustWait):
            lead.write_soon(OpenSession(ttl_ms=1000, time_ms=0))  # stamped with the clock by write
        with pytest.raises(MustWait):
            lead.read_soon(linearizable=False, min_revision=10**9)  # wait_applied
        assert lead.driver.raw.status().last_index == last

        # The coroutine's exceptions, after the future completed.
        lost = asyncio.get_running_loop().create_future()
        lost.set_exception(ProposalLost("replaced"))
        with pytest.raises(RetryWrite):
            lead.write_settled(lost)
        late = asyncio.get_running_loop().create_future()
        late.set_exception(TimeoutError())
        with pytest.raises(OperationTimeout):
            lead.write_settled(late)
        with pytest.raises(OperationTimeout):
            lead.read_settled(late)  # a leader is known: the read timed out
        gone = asyncio.get_running_loop().create_future()
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            lead.read_settled(gone)

        # Stopping: refused at once, as write/read would.
        lead.driver.draining = True
        with pytest.raises(NodeStopping):
            lead.write_soon(Put("k", "v3"))
        with pytest.raises(NodeStopping):
            lead.read_soon(linearizable=True)
        lead.driver.draining = False


@aio
async def test_a_read_that_times_out_without_a_leader_is_no_leader(tmp_path: Path) -> None:
    ids = [NodeId("n1"), NodeId("n2"), NodeId("n3")]
    ports = dict(zip(ids, _ports(3), strict=True))
    node = RaftKVNode(_options(tmp_path, ports, ids[1]))  # alone: never learns a leader
    try:
        await node.start()
        with pytest.raises(MustWait):
            node.read_soon(linearizable=True)  # no leader known: read_barrier waits for one
        late = asyncio.get_running_loop().create_future()
        late.set_exception(TimeoutError())
        with pytest.raises(NoLeaderError):
            node.read_settled(late)
    finally:
        await node.stop()
