"""Read-only debug endpoints for the operator's inspector (`raftkv inspect`).

Routes (documented in the README, "Debug endpoints"):
    GET /debug/keys ?prefix=&limit=&after=&max_bytes=   stale listing of applied key/values
    GET /debug/log  ?from=&limit=            this node's durable Raft log + snapshot files

Rules:
- Read-only and local: nothing is proposed or forwarded; the answer is this node's own view,
  which is the point (the inspector compares nodes side by side).
- The routes exist on every app; a node that offers no inspector (a test fake) answers
  501 `not_supported` instead of the route being missing.
- Pages are capped by count and by key+value bytes (`max_bytes`, at most MAX_KEYS_PAGE_BYTES;
  a page always holds at least one item so that paging progresses).
- `server.debug_endpoints: false` answers every /debug route 404 `debug_disabled`. With auth on,
  they need the root role (auth middleware).
- Bad query parameters are 400 `invalid_parameter` naming the parameter.
- A node that refuses reads (halted, failed after a storage failure, stopping) answers both
  routes as it answers a KV read: 503 `node_halted` / `node_stopping` (runtime/inspect.py).
"""

from __future__ import annotations

from typing import Final, Protocol, runtime_checkable

from aiohttp import web

from raftkv.runtime.inspect import MAX_KEYS_PAGE, MAX_KEYS_PAGE_BYTES, MAX_LOG_PAGE, NodeInspector
from raftkv.server.errors import ApiError, json_response

DEFAULT_KEYS_PAGE: Final = 1000
DEFAULT_LOG_PAGE: Final = 100


@runtime_checkable
class Inspectable(Protocol):
    def inspector(self) -> NodeInspector: ...


def add_inspect_routes(app: web.Application, node: object, *, enabled: bool = True) -> None:
    routes = _InspectRoutes(node.inspector() if isinstance(node, Inspectable) else None, node)
    if not enabled:
        app.router.add_route("*", "/debug/{rest:.*}", routes.disabled)
        return
    app.router.add_get("/debug/keys", routes.keys)
    app.router.add_get("/debug/log", routes.log)


def _int_param(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ApiError(400, "invalid_parameter", f"{name} is required", parameter=name)
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(
            400, "invalid_parameter", f"{name} must be an integer", parameter=name
        ) from None
    if not lo <= value <= hi:
        raise ApiError(400, "invalid_parameter", f"{name} must be in [{lo}, {hi}]", parameter=name)
    return value


class _InspectRoutes:
    def __init__(self, inspector: NodeInspector | None, node: object) -> None:
        self._inspector = inspector
        self._node_id = str(getattr(node, "node_id", ""))

    def _need(self) -> NodeInspector:
        if self._inspector is None:
            raise ApiError(501, "not_supported", "this node offers no inspection endpoints")
        return self._inspector

    async def disabled(self, request: web.Request) -> web.StreamResponse:
        raise ApiError(
            404,
            "debug_disabled",
            "debug endpoints are disabled on this node (server.debug_endpoints: false)",
        )

    async def keys(self, request: web.Request) -> web.StreamResponse:
        inspector = self._need()
        prefix = request.query.get("prefix", "")
        after = request.query.get("after")
        limit = _int_param(request, "limit", DEFAULT_KEYS_PAGE, 1, MAX_KEYS_PAGE)
        max_bytes = _int_param(request, "max_bytes", MAX_KEYS_PAGE_BYTES, 1, MAX_KEYS_PAGE_BYTES)
        page = await inspector.keys(prefix, limit, after, max_bytes=max_bytes)
        return json_response(
            {
                "node_id": self._node_id,
                "applied_index": page.applied_index,
                "count": len(page.items),
                "items": [{"key": k, "value": v} for k, v in page.items],
                "next_after": page.next_after,
            }
        )

    async def log(self, request: web.Request) -> web.StreamResponse:
        inspector = self._need()
        start = (
            _int_param(request, "from", None, 1, 2**63 - 1) if request.query.get("from") else None
        )
        limit = _int_param(request, "limit", DEFAULT_LOG_PAGE, 0, MAX_LOG_PAGE)
        page = await inspector.log(start, limit)
        return json_response(
            {
                "node_id": self._node_id,
                "first_index": page.first_index,
                "last_index": page.last_index,
                "entry_count": page.entry_count,
                "snapshot_index": page.snapshot_index,
                "bytes_on_disk": page.bytes_on_disk,
                "snapshots": [
                    {"file": s.file, "index": s.index, "term": s.term, "bytes": s.bytes}
                    for s in page.snapshots
                ],
                "entries": [
                    {
                        "index": e.index,
                        "term": e.term,
                        "type": e.type,
                        "command": e.command,
                        "bytes": e.bytes,
                    }
                    for e in page.entries
                ],
            }
        )
