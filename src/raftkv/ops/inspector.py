"""The inspector's reports: cluster status, data side by side, Raft log, a round-trip test.

Rules:
- Gathering (async, over HTTP) and judging (pure functions over plain dicts) are separate, so
  the judging — lag, leader, divergence, pass/fail — is unit-tested without a cluster.
- Every report is a plain JSON-able dict; `--json` prints it as is and the rich tables
  (`render.py`) are drawn from the same dict, so the two outputs never disagree.
- The cluster's members come from the given node's `/cluster/status`; each member is then asked
  for its own `/cluster/local`, so a node the entry node cannot reach but we can still shows.
- Lag = the leader's commit index minus the node's applied index (entries the node has yet to
  apply); unknown (None) when no leader is reachable or the node is not.
- Data divergence is judged on stale, per-node listings taken at slightly different instants:
  under write load a lagging node can differ transiently. Each node's applied index is reported
  beside the data so a reader can tell.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import Mapping
from typing import Any, Final

import aiohttp

from raftkv.ops.httpc import (
    HTTPS_HINT,
    Reply,
    base_url,
    kv_path,
    make_session,
    request,
    session_tls,
)

DEFAULT_ADDRESS: Final = "localhost:8081"
KEYS_PAGE: Final = 10_000


class InspectError(Exception):
    """The entry node could not be asked (unreachable, or not a raftkv node)."""


# -- discovery ------------------------------------------------------------------------------


async def cluster_status(session: aiohttp.ClientSession, address: str) -> dict[str, Any]:
    """`address`'s /cluster/status body (members, alarms, space)."""
    reply = await request(session, "GET", address, "/cluster/status")
    if not reply.ok or not isinstance(reply.body, dict):
        why = _why(reply)
        if reply.error and not session_tls(session) and not address.startswith("https://"):
            why += HTTPS_HINT
        raise InspectError(f"cannot read /cluster/status from {address}: {why}")
    return reply.body


def members_of(status: Mapping[str, Any], address: str) -> dict[str, str]:
    """Node id -> HTTP address of every member listed in a /cluster/status body."""
    nodes = status.get("nodes")
    if not isinstance(nodes, dict):
        raise InspectError(f"{address}: /cluster/status has no nodes")
    out: dict[str, str] = {}
    for node_id, entry in sorted(nodes.items()):
        http = entry.get("http_address") if isinstance(entry, dict) else None
        out[str(node_id)] = str(http) if http else address
    return out


async def discover(session: aiohttp.ClientSession, address: str) -> dict[str, str]:
    """Node id -> HTTP address of every member, from `address`'s /cluster/status."""
    return members_of(await cluster_status(session, address), address)


def _why(reply: Reply) -> str:
    if reply.error:
        return reply.error
    words = f"HTTP {reply.status}"
    if isinstance(reply.body, dict) and "error" in reply.body:
        words += f": {reply.body['error']}"
    if reply.status in (401, 403):
        words += " (auth is on: give --user/--password or --token; these reports need root)"
    return words


# -- status ---------------------------------------------------------------------------------


async def gather_status(session: aiohttp.ClientSession, address: str) -> dict[str, Any]:
    status = await cluster_status(session, address)
    members = members_of(status, address)
    ids = sorted(members)
    replies = await asyncio.gather(
        *(request(session, "GET", members[i], "/cluster/local") for i in ids)
    )
    locals_: dict[str, dict[str, Any] | None] = {}
    errors: dict[str, str] = {}
    for node_id, reply in zip(ids, replies, strict=True):
        if reply.ok and isinstance(reply.body, dict):
            locals_[node_id] = reply.body
        else:
            locals_[node_id] = None
            errors[node_id] = _why(reply)
    report = build_status(members, locals_, errors)
    # Replicated state, the same on every member that applied it: the asked node's view.
    alarms = status.get("alarms")
    report["alarms"] = alarms if isinstance(alarms, list) else []
    space = status.get("space")
    report["space"] = space if isinstance(space, dict) else None
    return report


def pick_leader(locals_: Mapping[str, Mapping[str, Any] | None]) -> str | None:
    """The self-reported leader of the highest term (at most one per term, §5.2)."""
    claims = [
        (int(s.get("term", 0)), node_id)
        for node_id, s in locals_.items()
        if s is not None and s.get("role") == "Leader"
    ]
    return max(claims)[1] if claims else None


def build_status(
    members: Mapping[str, str],
    locals_: Mapping[str, Mapping[str, Any] | None],
    errors: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The status report from each member's /cluster/local (None: unreachable)."""
    leader = pick_leader(locals_)
    leader_commit = None
    if leader is not None:
        leader_status = locals_[leader]
        assert leader_status is not None
        leader_commit = int(leader_status.get("commit_index", 0))
    rows: list[dict[str, Any]] = []
    for node_id in sorted(members):
        s = locals_.get(node_id)
        row: dict[str, Any] = {
            "id": node_id,
            "http_address": members[node_id],
            "reachable": s is not None,
            "is_leader": node_id == leader,
        }
        if s is None:
            row.update(
                role=None,
                term=None,
                leader_id=None,
                commit_index=None,
                applied_index=None,
                last_index=None,
                lag=None,
                error=(errors or {}).get(node_id, "unreachable"),
            )
        else:
            applied = int(s.get("applied_index", 0))
            row.update(
                role=s.get("role"),
                term=int(s.get("term", 0)),
                leader_id=s.get("leader_id"),
                commit_index=int(s.get("commit_index", 0)),
                applied_index=applied,
                last_index=int(s.get("last_index", 0)),
                lag=None if leader_commit is None else max(0, leader_commit - applied),
                error=None,
            )
        rows.append(row)
    reachable = sum(1 for r in rows if r["reachable"])
    return {
        "leader": leader,
        "cluster_size": len(rows),
        "reachable": reachable,
        "healthy": leader is not None and reachable > len(rows) // 2,
        "nodes": rows,
    }


# -- data -----------------------------------------------------------------------------------


async def fetch_keys(
    session: aiohttp.ClientSession, address: str, prefix: str, limit: int
) -> tuple[dict[str, str] | None, int | None, bool, str | None]:
    """(key -> value, applied index, truncated, error) of one node's stale listing."""
    items: dict[str, str] = {}
    after: str | None = None
    applied: int | None = None
    while True:
        params = {"prefix": prefix, "limit": str(min(KEYS_PAGE, limit - len(items)))}
        if after is not None:
            params["after"] = after
        reply = await request(session, "GET", address, "/debug/keys", params=params)
        if not reply.ok or not isinstance(reply.body, dict):
            return None, None, False, _why(reply)
        if applied is None:
            applied = int(reply.body.get("applied_index", 0))
        for item in reply.body.get("items", []):
            items[str(item["key"])] = str(item["value"])
        after = reply.body.get("next_after")
        if after is None:
            return items, applied, False, None
        if len(items) >= limit:
            return items, applied, True, None


async def gather_data(
    session: aiohttp.ClientSession, address: str, prefix: str = "", limit: int = 1000
) -> dict[str, Any]:
    status = await cluster_status(session, address)
    members = members_of(status, address)
    ids = sorted(members)
    fetched = await asyncio.gather(*(fetch_keys(session, members[i], prefix, limit) for i in ids))
    per_node = {i: f[0] for i, f in zip(ids, fetched, strict=True)}
    meta = {
        i: {"applied_index": f[1], "truncated": f[2], "error": f[3]}
        for i, f in zip(ids, fetched, strict=True)
    }
    return compare_data(per_node, meta, prefix=prefix, limit=limit)


def compare_data(
    per_node: Mapping[str, Mapping[str, str] | None],
    meta: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    prefix: str = "",
    limit: int = 1000,
) -> dict[str, Any]:
    """Keys side by side; a key is divergent when reachable nodes disagree (absent counts).

    With a truncated listing, keys past the shortest listing's last key are not judged (the
    other node simply was not asked that far)."""
    nodes = sorted(per_node)
    reachable = [n for n in nodes if per_node[n] is not None]
    cutoff: str | None = None
    for n in reachable:
        if meta and meta.get(n, {}).get("truncated"):
            listing = per_node[n]
            assert listing is not None
            last = max(listing) if listing else ""
            cutoff = last if cutoff is None else min(cutoff, last)
    keys: set[str] = set()
    for n in reachable:
        listing = per_node[n]
        assert listing is not None
        keys.update(listing)
    rows: list[dict[str, Any]] = []
    divergent = 0
    for key in sorted(keys):
        if cutoff is not None and key > cutoff:
            continue
        values: dict[str, str | None] = {}
        for n in nodes:
            listing = per_node[n]
            values[n] = None if listing is None else listing.get(key)
        seen = {values[n] for n in reachable}
        diverges = len(seen) > 1
        divergent += diverges
        rows.append({"key": key, "values": values, "divergent": diverges})
    return {
        "prefix": prefix,
        "limit": limit,
        "nodes": {
            n: {
                "reachable": per_node[n] is not None,
                "keys": None if per_node[n] is None else len(per_node[n] or {}),
                **(meta or {}).get(n, {}),
            }
            for n in nodes
        },
        "keys": rows,
        "divergent": divergent,
        "consistent": divergent == 0 and len(reachable) == len(nodes),
    }


# -- raft log -------------------------------------------------------------------------------


async def gather_raft(
    session: aiohttp.ClientSession,
    address: str,
    node: str | None = None,
    start: int | None = None,
    limit: int = 20,
) -> dict[str, Any]:
    """The log of `node` (default: the node at `address`) from its /debug/log."""
    target = address
    if node is not None:
        members = await discover(session, address)
        if node not in members:
            raise InspectError(f"no node {node!r} in the cluster (have {', '.join(members)})")
        target = members[node]
    params = {"limit": str(limit)}
    if start is not None:
        params["from"] = str(start)
    reply = await request(session, "GET", target, "/debug/log", params=params)
    if not reply.ok or not isinstance(reply.body, dict):
        raise InspectError(f"cannot read /debug/log from {target}: {_why(reply)}")
    return {"source": base_url(target, "https" if session_tls(session) else "http"), **reply.body}


# -- round-trip test ------------------------------------------------------------------------


async def gather_test(session: aiohttp.ClientSession, address: str) -> dict[str, Any]:
    """Through every node: PUT, GET there, GET on the next node, DELETE, GET (must be 404)."""
    status = await cluster_status(session, address)
    members = members_of(status, address)
    ids = sorted(members)
    run = secrets.token_hex(4)
    steps: list[dict[str, Any]] = []
    for pos, node_id in enumerate(ids):
        here = members[node_id]
        other_id = ids[(pos + 1) % len(ids)]
        key = f"inspect-test:{run}:{node_id}"
        value = f"value-{run}-{node_id}"
        path = kv_path(key)
        put = await request(session, "PUT", here, path, data=value)
        steps.append(_step(node_id, "put", put, put.ok))
        got = await request(session, "GET", here, path)
        steps.append(_step(node_id, "get", got, got.ok and _value(got) == value))
        peer = await request(session, "GET", members[other_id], path)
        ok_peer = peer.ok and _value(peer) == value
        steps.append(_step(node_id, f"get via {other_id}", peer, ok_peer))
        deleted = await request(session, "DELETE", here, path)
        steps.append(_step(node_id, "delete", deleted, deleted.ok))
        gone = await request(session, "GET", here, path)
        steps.append(_step(node_id, "get after delete", gone, gone.status == 404))
    passed = sum(1 for s in steps if s["ok"])
    return {
        "steps": steps,
        "passed": passed,
        "failed": len(steps) - passed,
        "ok": passed == len(steps),
    }


def _value(reply: Reply) -> object:
    return reply.body.get("value") if isinstance(reply.body, dict) else None


def _step(node_id: str, name: str, reply: Reply, ok: bool) -> dict[str, Any]:
    detail = None if ok else _why(reply)
    return {
        "node": node_id,
        "step": name,
        "ok": ok,
        "status": reply.status,
        "ms": round(reply.elapsed_ms, 2),
        "detail": detail,
    }


async def run_report(
    kind: str,
    address: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    auth_header: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """One report by name, in its own client session (HTTPS with `ssl_context`; with auth on,
    `auth_header` is the operator's credentials: the data, raft and test reports need root)."""
    async with make_session(ssl_context=ssl_context, auth_header=auth_header) as session:
        match kind:
            case "status":
                return await gather_status(session, address)
            case "data":
                return await gather_data(session, address, **kwargs)
            case "raft":
                return await gather_raft(session, address, **kwargs)
            case "test":
                return await gather_test(session, address)
    raise ValueError(f"unknown report {kind!r}")
