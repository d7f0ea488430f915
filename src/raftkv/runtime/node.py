"""`RaftKVNode`: the key-value node the HTTP server talks to (implements `runtime.api.KVNode`).

Rules:
- Writes become `kv.commands` in log entries; they return once committed AND applied here.
- `get(linearizable=True)` runs a ReadIndex barrier (thesis §6.4) on any node, followers
  included, then reads local applied state; `linearizable=False` reads local state at once.
- Readiness: a leader is known and this node has applied what it knows committed, give or
  take `READY_APPLY_LAG` entries (`caught_up`): a follower under a steady write load learns a
  commit index a loop turn before it applies it, and /ready must not flap with each write.
- A halted node (runtime/halt.py) refuses every read, stale ones included (`NodeHalted`), is
  never ready, and reports role "Halted" with its `HaltReport`. So does a node that failed
  (storage failure: its applied state may be ahead of or behind what is durable, and it is
  exiting) or is stopped (`NodeStopping`), checked again after a read's waits
  (`check_readable`). A graceful drain still serves stale reads until the listener closes.
  The same test guards every other view of the applied data: the auth records (`local_get`,
  `local_items`: user and role listings, and authenticating a request), the inspector's key
  listing and backups (runtime/inspect.py, runtime/backup.py).
- Peer addresses are the live, replicated membership record (runtime/members.py), not the
  configured `nodes`: a member added later is listed, a removed one is not.
- The leader proposes a command kind only once every member understands it
  (`runtime/features.py`): otherwise `FeatureNotEnabled`, and nothing is proposed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import msgspec

from raftkv.codec.commands import encode_command
from raftkv.kv.commands import (
    Command,
    Delete,
    DeleteResult,
    OpenSession,
    Put,
    Result,
    SessionRequest,
)
from raftkv.kv.mvcc import MVCCStore
from raftkv.kv.quota import SpaceRecord, space, usage
from raftkv.kv.registry import BASE_COMMAND_SET, kind_of
from raftkv.raft.types import Role
from raftkv.runtime.api import ROLE_HALTED, LocalStatus, MustWait, NotLeaderError
from raftkv.runtime.backup import Backups
from raftkv.runtime.driver import RaftDriver
from raftkv.runtime.features import OWN_VERSIONS, ClusterVersions, check_enabled, cluster_versions
from raftkv.runtime.inspect import NodeInspector
from raftkv.runtime.membership import MembershipManager
from raftkv.runtime.metrics import RuntimeMetrics
from raftkv.runtime.options import NodeOptions
from raftkv.storage.state_lmdb import LmdbState
from raftkv.transport.tcp import PeerTransport

T = TypeVar("T")

READY_APPLY_LAG = 1000
"""Committed entries a node may still have to apply and be ready: one apply pass of a loaded
follower, far below the backlog of a node that is catching up after a restart or partition."""


def caught_up(commit: int, applied: int) -> bool:
    """Readiness' apply condition (module rules)."""
    return commit - applied <= READY_APPLY_LAG


def _addr(host_port: tuple[str, int]) -> str:
    return f"{host_port[0]}:{host_port[1]}"


class RaftKVNode:
    def __init__(self, opts: NodeOptions) -> None:
        self.opts = opts
        self.driver = RaftDriver(opts)
        self.membership = MembershipManager(self.driver, auto_promote=opts.auto_promote)
        # (key, value) cache of cluster_versions(): the key is what the value depends on.
        self._versions: tuple[tuple[object, ...], ClusterVersions] | None = None
        self._backups = Backups(self.driver)

    @property
    def node_id(self) -> str:
        return self.opts.node_id

    async def start(self) -> None:
        await self.driver.start()
        self.membership.start()

    async def stop(self) -> None:
        await self.membership.stop()
        await self.driver.stop()

    def cluster_versions(self) -> ClusterVersions:
        """What every member understands, as this node knows it (runtime/features.py).
        Recomputed only when the configuration or a peer's advertised versions change."""
        conf = self.driver.raw.conf
        advertised = tuple(self.driver.transport.peer_versions().items())
        if self._versions is None or self._versions[0] != (conf, advertised):
            peers = {str(n): v for n, v in advertised}
            computed = cluster_versions(self.opts.node_id, conf.all_nodes(), peers)
            self._versions = ((conf, advertised), computed)
        return self._versions[1]

    def _check_feature(self, cmd: Command) -> None:
        """The leader refuses a kind that some member cannot apply yet (FeatureNotEnabled)."""
        if kind_of(cmd).since <= BASE_COMMAND_SET:
            return  # understood by every version: no lookup on the hot path
        if self.driver.raw.leader != self.opts.node_id:
            return  # the leader decides; a follower's propose raises NotLeader (forwarded)
        check_enabled(cmd, self.cluster_versions())

    async def write(self, cmd: Command) -> Result:
        self._check_feature(cmd)
        if isinstance(cmd, OpenSession | SessionRequest):
            # The state machine's clock (thesis §6.3): the proposing leader's wall clock, in
            # the entry. Stamped here, on the node that proposes; a follower raises NotLeader
            # below and never proposes, so its clock never reaches the log.
            cmd = msgspec.structs.replace(cmd, time_ms=int(time.time() * 1000))
        result = await self.driver.propose(encode_command(cmd))
        assert result is not None  # a command entry always has a result
        return result  # type: ignore[return-value]  # propose returns the apply result

    # -- SoonNode (runtime/api.py): the same calls without a coroutine (runtime/soon.py) ------

    def write_soon(self, cmd: Command) -> asyncio.Future[object]:
        if isinstance(cmd, OpenSession | SessionRequest):
            raise MustWait  # stamped with the clock by `write`; not a hot-path command
        self._check_feature(cmd)
        return self.driver.propose_nowait(encode_command(cmd))

    def write_settled(self, fut: asyncio.Future[object]) -> Result:
        result = self.driver.proposal_settled(fut)
        assert result is not None  # a command entry always has a result
        return result  # type: ignore[return-value]  # the apply result of a command

    def read_soon(
        self, *, linearizable: bool, min_revision: int = 0, lease: bool = False
    ) -> asyncio.Future[None] | None:
        self.driver.check_readable()  # as read_fence
        if min_revision > self.driver.sm.applied_index:
            raise MustWait  # read_fence's wait_applied
        return self.driver.read_barrier_nowait(lease=lease) if linearizable else None

    def read_settled(self, fut: asyncio.Future[None]) -> None:
        self.driver.read_settled(fut)
        self.driver.check_readable()  # as read_fence after its waits

    def read_applied(self, fn: Callable[[MVCCStore], T]) -> T:
        return self.driver.sm.read(fn)

    def leader_elsewhere(self) -> NotLeaderError | None:
        """What `write` would raise at once on a follower that knows its leader, without
        proposing; None when `write` must run (RaftDriver.leader_elsewhere)."""
        return self.driver.leader_elsewhere()

    # Shorthands for tests and tools (the server uses `write`/`read`).
    async def propose_command(self, cmd: Command) -> object:
        """Propose any registered command (auth management); returns its apply result."""
        return await self.write(cmd)

    def local_get(self, key: str) -> str | None:
        """This node's applied auth record `key`, at once (no ReadIndex). A stale read like
        any other: refused once the node refuses reads (`check_readable`)."""
        self.driver.check_readable()
        return self.driver.sm.read(lambda store: store.auth_get(key))

    def local_items(self, prefix: str) -> list[tuple[str, str]]:
        """This node's applied auth records under `prefix` (users, roles: small); refused as
        `local_get`."""
        self.driver.check_readable()
        return self.driver.sm.read(lambda store: store.auth_items(prefix))

    async def put(self, key: str, value: str | bytes) -> Result:
        return await self.write(Put(key, value))

    async def delete(self, key: str) -> bool:
        result = await self.write(Delete(key))
        return isinstance(result, DeleteResult) and result.existed

    async def get(self, key: str, *, linearizable: bool) -> str | bytes | None:
        kv = await self.read(lambda s: s.get(key), linearizable=linearizable)
        return None if kv is None else kv.value

    async def read(
        self,
        fn: Callable[[MVCCStore], T],
        *,
        linearizable: bool,
        min_revision: int = 0,
        lease: bool = False,
    ) -> T:
        await self.read_fence(linearizable=linearizable, min_revision=min_revision, lease=lease)
        return self.driver.sm.read(fn)

    def serves_reads(self) -> bool:
        """False once no read may be served, stale ones included (module rules)."""
        return not self.driver.refuses_reads()

    def when_reads_refused(self, callback: Callable[[], None]) -> None:
        """`callback()` at once when the node stops serving reads (halt.when_reads_refused)."""
        self.driver.when_reads_refused(callback)

    def state_dir(self) -> Path | None:
        """The LMDB state's directory (other processes may read it), None for other backends."""
        sm = self.driver.sm
        return sm.path if isinstance(sm, LmdbState) else None

    async def read_fence(
        self, *, linearizable: bool, min_revision: int = 0, lease: bool = False
    ) -> int:
        """Wait until a read may run on the applied state; return the applied index then.
        A read issued now and run on a state applied at least this far is as `read` makes it
        (the HTTP read workers run it on their own view of the state: server/read_workers.py)."""
        self.driver.check_readable()  # halted, failed or stopped: no reads at all
        if min_revision > 0:
            await self.driver.wait_applied(min_revision)
        if linearizable:
            await self.driver.read_barrier(lease=lease)
        # A wait that completed just before a failure resumes after it: check again.
        self.driver.check_readable()
        return self.driver.sm.applied_index

    def local_status(self) -> LocalStatus:
        st = self.driver.status()
        halted = self.driver.halted
        return LocalStatus(
            node_id=self.opts.node_id,
            role=st.role.value if halted is None else ROLE_HALTED,
            term=st.term,
            leader_id=st.leader if halted is None else None,
            commit_index=st.commit,
            applied_index=self.driver.sm.applied_index,
            last_index=st.last_index,
            raft_address=self.opts.raft_advertise,
            http_address=self.opts.http_advertise,
            format_version=(self.opts.advertise_versions or OWN_VERSIONS)[0],
            command_set=(self.opts.advertise_versions or OWN_VERSIONS)[1],
            halted=halted,
        )

    def space(self) -> tuple[int, SpaceRecord]:
        """Usage and the quota/alarm record of the applied state (kv/quota.py), at once."""
        return self.driver.sm.read(lambda store: (usage(store), space(store)))

    def is_ready(self) -> bool:
        st = self.driver.status()
        if st.leader is None or self.driver.halted is not None or self.driver.failed:
            return False  # failed: on its way out after a storage failure, taking nothing
        return st.role is Role.LEADER or caught_up(st.commit, self.driver.sm.applied_index)

    def peer_http_addresses(self) -> Mapping[str, str]:
        record = self.driver.table.record.members
        if not record:  # not started yet
            return {str(n): a for n, a in self.opts.peers_http.items()}
        return {n: m.http_address for n, m in record.items()}

    def peer_raft_addresses(self) -> Mapping[str, str]:
        record = self.driver.table.record.members
        if not record:
            return {n: _addr(a) for n, a in self.opts.peers_raft.items()}
        return {n: m.raft_address for n, m in record.items()}

    def forward_link(self) -> PeerTransport | None:
        """The peer transport, for forwarding writes over peer links (server/peer_forward.py),
        when `peer_forwarding` is on and the node runs; else None (forward over HTTP)."""
        if not self.opts.peer_forwarding:
            return None
        return getattr(self.driver, "transport", None)

    def inspector(self) -> NodeInspector:
        """Read-only views for the /debug endpoints (runtime/inspect.py)."""
        return NodeInspector(self.driver)

    def backups(self) -> Backups:
        """Consistent snapshot copies for `GET /cluster/snapshot` (runtime/backup.py)."""
        return self._backups

    def metrics(self) -> RuntimeMetrics | None:
        """The node's Prometheus metrics for /metrics, or None when they are switched off."""
        return self.driver.metrics if self.opts.metrics else None
