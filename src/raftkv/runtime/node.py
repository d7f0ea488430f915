"""`RaftKVNode`: the key-value node the HTTP server talks to (implements `runtime.api.KVNode`).

Rules:
- Writes become `kv.commands` in log entries; they return once committed AND applied here.
- `get(linearizable=True)` runs a ReadIndex barrier (thesis §6.4) on any node, followers
  included, then reads local applied state; `linearizable=False` reads local state at once.
- Readiness: a leader is known and this node has applied everything it knows committed.
- Peer addresses are the live, replicated membership record (runtime/members.py), not the
  configured `nodes`: a member added later is listed, a removed one is not.
"""

from __future__ import annotations

from collections.abc import Mapping

from raftkv.codec.commands import encode_command
from raftkv.kv.commands import Delete, DeleteResult, Put
from raftkv.raft.types import Role
from raftkv.runtime.api import LocalStatus
from raftkv.runtime.driver import RaftDriver
from raftkv.runtime.inspect import NodeInspector
from raftkv.runtime.membership import MembershipManager
from raftkv.runtime.metrics import RuntimeMetrics
from raftkv.runtime.options import NodeOptions


def _addr(host_port: tuple[str, int]) -> str:
    return f"{host_port[0]}:{host_port[1]}"


class RaftKVNode:
    def __init__(self, opts: NodeOptions) -> None:
        self.opts = opts
        self.driver = RaftDriver(opts)
        self.membership = MembershipManager(self.driver, auto_promote=opts.auto_promote)

    @property
    def node_id(self) -> str:
        return self.opts.node_id

    async def start(self) -> None:
        await self.driver.start()
        self.membership.start()

    async def stop(self) -> None:
        await self.membership.stop()
        await self.driver.stop()

    async def put(self, key: str, value: str) -> None:
        await self.driver.propose(encode_command(Put(key, value)))

    async def delete(self, key: str) -> bool:
        result = await self.driver.propose(encode_command(Delete(key)))
        return isinstance(result, DeleteResult) and result.existed

    async def get(self, key: str, *, linearizable: bool) -> str | None:
        if linearizable:
            await self.driver.read_barrier()
        return self.driver.stale_get(key)

    def local_status(self) -> LocalStatus:
        st = self.driver.status()
        return LocalStatus(
            node_id=self.opts.node_id,
            role=st.role.value,
            term=st.term,
            leader_id=st.leader,
            commit_index=st.commit,
            applied_index=self.driver.sm.applied_index,
            last_index=st.last_index,
            raft_address=self.opts.raft_advertise,
            http_address=self.opts.http_advertise,
        )

    def is_ready(self) -> bool:
        st = self.driver.status()
        if st.leader is None:
            return False
        if st.role is Role.LEADER:
            return True
        return self.driver.sm.applied_index >= st.commit

    def peer_http_addresses(self) -> Mapping[str, str]:
        record = self.driver.members.members
        if not record:  # not started yet
            return {str(n): a for n, a in self.opts.peers_http.items()}
        return {n: m.http_address for n, m in record.items()}

    def peer_raft_addresses(self) -> Mapping[str, str]:
        record = self.driver.members.members
        if not record:
            return {n: _addr(a) for n, a in self.opts.peers_raft.items()}
        return {n: m.raft_address for n, m in record.items()}

    def inspector(self) -> NodeInspector:
        """Read-only views for the /debug endpoints (runtime/inspect.py)."""
        return NodeInspector(self.driver)

    def metrics(self) -> RuntimeMetrics | None:
        """The node's Prometheus metrics for /metrics, or None when they are switched off."""
        return self.driver.metrics if self.opts.metrics else None
