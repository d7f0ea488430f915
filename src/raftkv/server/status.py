"""Cluster status: a node's own view (`GET /cluster/local`) and the cluster's (`/cluster/status`).

Rules:
- `/cluster/status` keeps the seed's shape (`cluster_size`, `is_leader`, `local_node_id`,
  `nodes`, `timestamp`) plus `leader`, and per node the Raft indexes. Other nodes' entries come
  from their own `/cluster/local`, asked concurrently with a short timeout; a node that does not
  answer (in time, or sensibly) is `{"state": "Unknown", "term": 0, ...}`.
- `is_leader` is true for exactly the leader: the node claimed as leader in the highest term
  seen (Election Safety: at most one leader per term). A deposed leader that has not yet noticed
  still shows `"state": "Leader"` but `"is_leader": false`.
- Per node `format_version` and `command_set` (what it understands; null when it does not
  answer) and `cluster_version`, their minimum (1 while any node does not answer).
- A halted node (runtime/halt.py) shows `"state": "Halted"` and its `halted` report.
- Nodes are listed sorted by id (the project's convention: never set or arrival order).
- Probes speak HTTPS when the API does, presenting this node's peer certificate (tls.py).
- Probes bind this node's address like forwarding does; they are GETs, so aiohttp's one retry on
  a dropped pooled connection is harmless here.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

import aiohttp
import msgspec
import structlog

from raftkv.runtime.api import ROLE_LEADER, ROLES, KVNode, LocalStatus
from raftkv.server.forward import make_connector

log = structlog.get_logger(__name__)

PEER_STATUS_TIMEOUT_S: Final = 0.3
UNKNOWN_STATE: Final = "Unknown"
_LOCAL_DECODER: Final = msgspec.json.Decoder(LocalStatus)


class StatusProbe:
    """Asks peers for their `/cluster/local` over a pooled, source-bound client session."""

    def __init__(
        self,
        *,
        source_ip: str | None,
        timeout_s: float = PEER_STATUS_TIMEOUT_S,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._scheme = "https" if ssl_context is not None else "http"
        self._session = aiohttp.ClientSession(
            connector=make_connector(source_ip, force_close=False, ssl_context=ssl_context),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            trust_env=False,
        )

    async def close(self) -> None:
        await self._session.close()

    async def fetch(self, node_id: str, http_address: str) -> LocalStatus | None:
        try:
            async with self._session.get(
                f"{self._scheme}://{http_address}/cluster/local", allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    return None
                status = _LOCAL_DECODER.decode(await resp.read())
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, msgspec.DecodeError) as exc:
            log.debug("peer status unavailable", peer=node_id, error=repr(exc))
            return None
        if status.node_id != node_id or status.role not in ROLES:
            log.warning(
                "unexpected peer status", peer=node_id, got=status.node_id, role=status.role
            )
            return None
        return status

    async def fetch_all(self, http_peers: Mapping[str, str]) -> dict[str, LocalStatus | None]:
        ids = sorted(http_peers)
        results = await asyncio.gather(*(self.fetch(i, http_peers[i]) for i in ids))
        return dict(zip(ids, results, strict=True))


def local_status_json(status: LocalStatus) -> dict[str, object]:
    return {
        "node_id": status.node_id,
        "role": status.role,
        "term": status.term,
        "leader_id": status.leader_id,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "last_index": status.last_index,
        "raft_address": status.raft_address,
        "http_address": status.http_address,
        "format_version": status.format_version,
        "command_set": status.command_set,
        **({"halted": status.halted.to_json()} if status.halted is not None else {}),
    }


def current_leader(statuses: Mapping[str, LocalStatus | None], local: LocalStatus) -> str | None:
    """The leader of the highest term anyone knows of, from self-reports and the local hint."""
    claims = [(s.term, s.node_id) for s in statuses.values() if s and s.role == ROLE_LEADER]
    if local.leader_id is not None:
        claims.append((local.term, local.leader_id))
    return max(claims)[1] if claims else None


async def cluster_status(node: KVNode, probe: StatusProbe) -> dict[str, object]:
    local = node.local_status()
    raft_peers = node.peer_raft_addresses()
    http_peers = node.peer_http_addresses()
    others = {i: a for i, a in http_peers.items() if i != local.node_id and i in raft_peers}
    statuses: dict[str, LocalStatus | None] = await probe.fetch_all(others)
    statuses[local.node_id] = local
    leader = current_leader(statuses, local)

    nodes: dict[str, object] = {}
    for node_id in sorted(set(raft_peers) | {local.node_id}):
        status = statuses.get(node_id)
        entry: dict[str, object] = {
            "id": node_id,
            "address": raft_peers.get(node_id, local.raft_address),
            "http_address": http_peers.get(node_id),
            "is_leader": node_id == leader,
        }
        if status is None:
            entry.update(state=UNKNOWN_STATE, term=0, commit_index=0, applied_index=0, last_index=0)
            entry.update(format_version=None, command_set=None)
        else:
            entry.update(
                state=status.role,
                term=status.term,
                commit_index=status.commit_index,
                applied_index=status.applied_index,
                last_index=status.last_index,
                format_version=status.format_version,
                command_set=status.command_set,
            )
            if status.halted is not None:  # runtime/halt.py: the entry, the error, what to do
                entry["halted"] = status.halted.to_json()
        nodes[node_id] = entry
    known = [s for s in statuses.values() if s is not None]
    all_known = len(known) == len(nodes)
    return {
        "cluster_size": len(raft_peers),
        "is_leader": leader == local.node_id,
        "local_node_id": local.node_id,
        "leader": leader,
        "nodes": nodes,
        "timestamp": rfc3339_now(),
        # What every node understands (a node not answering counts as 1, like the leader's
        # feature gate counts a member it has not heard from): runtime/features.py.
        "cluster_version": {
            "format_version": min(s.format_version for s in known) if all_known else 1,
            "command_set": min(s.command_set for s in known) if all_known else 1,
        },
    }


def rfc3339_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
