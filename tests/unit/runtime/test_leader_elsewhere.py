"""`RaftKVNode.leader_elsewhere`: a follower that knows its leader answers what `write` would
raise, without proposing; anything else (the leader, stopping) is left to `write`."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftkv.kv.commands import Put
from raftkv.raft.types import Role
from raftkv.runtime.api import NodeStopping, NotLeaderError
from tests.unit.runtime.test_soon import three_nodes
from tests.unit.server.fakes import aio


@aio
async def test_a_follower_names_its_leader_as_write_would(tmp_path: Path) -> None:
    async with three_nodes(tmp_path) as nodes:
        lead = next(n for n in nodes.values() if n.driver.status().role is Role.LEADER)
        assert lead.leader_elsewhere() is None  # the leader proposes
        for node in nodes.values():
            if node is lead:
                continue
            quick = node.leader_elsewhere()
            assert isinstance(quick, NotLeaderError)
            with pytest.raises(NotLeaderError) as slow:
                await node.write(Put("k", "v"))
            assert (quick.leader_id, quick.leader_http) == (
                slow.value.leader_id,
                slow.value.leader_http,
            )
            assert quick.leader_id == lead.node_id
            assert quick.leader_http == lead.opts.http_advertise
        follower = next(n for n in nodes.values() if n is not lead)
        follower.driver.draining = True  # a graceful stop began: write answers it itself
        assert follower.leader_elsewhere() is None
        with pytest.raises(NodeStopping):
            await follower.write(Put("k", "v"))
