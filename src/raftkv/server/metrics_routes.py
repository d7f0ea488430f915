"""`GET /metrics` (Prometheus text format) and the HTTP API's own series.

Routes (documented in docs/metrics.md):
    GET /metrics   the node's registry (`runtime/metrics.py`) plus the series below

Rules:
- Requests are counted and timed by route and status: the route is the method and the route
  pattern ("PUT /kv/{key}"), never the raw path (keys would make unbounded series); a path no
  route matches is "unmatched". The middleware is the outermost one, so it sees the status of the
  reply actually sent, JSON error replies included; a request cancelled because its client went
  away counts with status "cancelled".
- Hot path: children are cached per aiohttp route object and status, so a request costs two
  dict lookups, two clock reads and one bisect (`runtime.metrics.Histogram`); nothing is
  formatted or validated per request.
- Writes forwarded to the leader are counted by the status the client got (503
  `leader_unreachable` and 504 `outcome_unknown` included).
- A node without metrics (`server.metrics: false`, or a test fake) gets no middleware, and
  `/metrics` answers 404 `metrics_disabled`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Final, Protocol, runtime_checkable

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import AbstractRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from raftkv.runtime.metrics import (
    LATENCY_BOUNDS,
    Histogram,
    Labelled,
    RuntimeMetrics,
    histogram_family,
)
from raftkv.server.errors import ApiError

UNMATCHED: Final = "unmatched"
_now: Final = time.perf_counter
CANCELLED: Final = 0  # the status recorded for a request cancelled because its client left


@runtime_checkable
class Measured(Protocol):
    def metrics(self) -> RuntimeMetrics | None: ...


class _RouteStats:
    __slots__ = ("by_status", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.by_status: Labelled[int, Histogram] = Labelled(lambda: Histogram(LATENCY_BOUNDS))


class HttpMetrics(Collector):
    """Request and forwarding series; registered into the node's registry."""

    def __init__(self, runtime: RuntimeMetrics) -> None:
        self._registry = runtime.registry
        self._routes: dict[AbstractRoute, _RouteStats] = {}
        self._named: dict[str, _RouteStats] = {}  # the fast engine's routes (fast_routes.py)
        self._forwarded: dict[int, int] = {}
        self._over_peer: dict[int, int] = {}  # of those, answered over the peer link
        self._registry.register(self)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        start = _now()
        try:
            resp = await handler(request)
        except asyncio.CancelledError:
            self._stats(request).by_status[CANCELLED].observe(_now() - start)
            raise
        self._stats(request).by_status[resp.status].observe(_now() - start)
        return resp

    def _stats(self, request: web.Request) -> _RouteStats:
        route = request.match_info.route
        stats = self._routes.get(route)
        if stats is None:
            stats = self._routes[route] = _RouteStats(_route_name(route))
        return stats

    def observe(self, route: str, status: int, seconds: float) -> None:
        """One request of the fast engine; `route` as aiohttp names it ("PUT /kv/{key}")."""
        stats = self._named.get(route)
        if stats is None:
            stats = self._named[route] = _RouteStats(route)
        stats.by_status[status].observe(seconds)

    def forwarded(self, status: int, *, over_peer: bool = False) -> None:
        self._forwarded[status] = self._forwarded.get(status, 0) + 1
        if over_peer:
            self._over_peer[status] = self._over_peer.get(status, 0) + 1

    async def scrape(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    def collect(self) -> Iterator[Metric]:
        # Several route objects can share a name ("*" routes): merge them by name and status.
        merged: Labelled[tuple[str, str], Histogram] = Labelled(lambda: Histogram(LATENCY_BOUNDS))
        for stats in (*self._routes.values(), *self._named.values()):
            for status, hist in stats.by_status.items():
                label = "cancelled" if status == CANCELLED else str(status)
                merged[(stats.name, label)].merge(hist)
        yield histogram_family(
            "raftkv_http_request_duration_seconds",
            "HTTP requests by route and status: latency (_count is the number of requests)",
            ("route", "status"),
            sorted(merged.items()),
        )
        yield _by_status(
            "raftkv_http_forwarded",
            "Writes this node forwarded to the leader, by the status the client got",
            self._forwarded,
        )
        yield _by_status(
            "raftkv_http_forwarded_over_peer",
            "Of the forwarded writes, those the peer link carried (server.forward_over_peer)",
            self._over_peer,
        )


def _by_status(name: str, documentation: str, counts: dict[int, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=["status"])
    for code, count in sorted(counts.items()):
        family.add_metric([str(code)], count)
    return family


def _route_name(route: AbstractRoute) -> str:
    resource = route.resource
    if resource is None:
        return UNMATCHED
    return f"{route.method} {resource.canonical}"


def add_metrics_routes(app: web.Application, node: object) -> HttpMetrics | None:
    """Serve /metrics and time every request when `node` has metrics; else /metrics is 404."""
    runtime = node.metrics() if isinstance(node, Measured) else None
    if runtime is None:
        app.router.add_get("/metrics", _disabled)
        return None
    http = HttpMetrics(runtime)
    app.middlewares.insert(0, http.middleware)
    app.router.add_get("/metrics", http.scrape)
    return http


async def _disabled(request: web.Request) -> web.StreamResponse:
    raise ApiError(404, "metrics_disabled", "metrics are switched off on this node")
