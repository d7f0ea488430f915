"""What the fast engine serves and how it is wired to aiohttp (`server.http_engine`).

Rules:
- `FastRoutes` (made by `create_app`, kept in the app as FAST_ROUTES) holds the app's own
  handlers of `PUT`, `GET` and `DELETE /kv/{key}` and wraps them as the aiohttp app's
  middlewares do, in the same order: metrics outermost (route named as aiohttp names it, a
  cancelled request counted as "cancelled"), then the JSON error mapping (`errors.error_reply`),
  then auth when `auth.enabled` (`Authenticator.middleware`, unchanged). The body gate's checks
  are made by the protocol before a request is taken (`fast_http.py`).
- `handle_soon` is the same without a coroutine (issue 12's hot path): the handlers' `*_soon`
  forms (kv_routes.py) answer now (a stale GET), or give a `Pending` reply that `settle` makes
  once the node's future is done (a linearizable GET, PUT, DELETE), with the same error
  mapping and metrics; None means "only `handle` can serve it" (auth on, sessions,
  forwarding, a lease read, a full turn budget...). A write whose proposal another leader's
  entry replaced is served again by `handle` (it proposes again, as `write` would).
- `FastServer` is the listener's protocol factory: it counts the fast connections, shares the
  connection cap with aiohttp's server (handed-off connections count there), reserves request
  bodies in the app's `BodyGate`, makes the aiohttp handler a connection is handed to, and on
  shutdown lets replies in progress finish (at most `timeout`) before closing connections.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, Protocol, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from raftkv.runtime.api import RetryWrite
from raftkv.server.auth import Authenticator
from raftkv.server.errors import Handler, error_reply
from raftkv.server.fast_http import FastProtocol
from raftkv.server.fast_request import FastRequest, HandBack, JsonReply, Pending
from raftkv.server.limits import BodyGate
from raftkv.server.metrics_routes import CANCELLED

if TYPE_CHECKING:
    from raftkv.server.read_workers import ReadWorkers

ENGINES: Final = ("aiohttp", "fast")
_KEY_ROUTE: Final = "/kv/{key}"  # the canonical name of the app's key route (metrics)
_now: Final = time.perf_counter
# A hot handler without a coroutine (kv_routes.KvRoutes.*_soon): (request, its body).
SoonHandler = Callable[[web.Request, bytes], web.StreamResponse | JsonReply | Pending | None]


class Observer(Protocol):
    """Where a served request is counted (`HttpMetrics`; a read worker's own batcher)."""

    def observe(self, route: str, status: int, seconds: float) -> None: ...


class FastRoutes:
    """The hot routes of one app, wrapped as the app wraps them (see the module rules)."""

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        gate: BodyGate,
        metrics: Observer | None,
        auth: Authenticator | None,
        soon: Mapping[str, SoonHandler] | None = None,
    ) -> None:
        self._handlers = dict(handlers)
        # Auth's checks may wait (scrypt in a thread): with auth on, `handle` serves all.
        self._soon = dict(soon or {}) if auth is None else {}
        self.methods = frozenset(handlers)
        self.gate = gate
        self._metrics = metrics
        self._auth = auth
        self._names = {m: f"{m} {_KEY_ROUTE}" for m in handlers}
        self.node: object = None  # the node served (create_app sets it: read workers)

    async def handle(self, req: FastRequest) -> web.StreamResponse:
        # The handlers use only what FastRequest has (fast_http.py; both engines run the
        # same API tests): it stands in for aiohttp's Request here.
        request = cast(web.Request, req)
        handler = self._handlers[req.method]
        start = _now()
        try:
            try:
                if self._auth is not None:
                    resp = await self._auth.middleware(request, handler)
                else:
                    resp = await handler(request)
            except HandBack:
                raise  # a read worker's: the node answers it (and counts it)
            except Exception as exc:  # CancelledError is a BaseException: it passes
                resp = error_reply(exc, request)
        except asyncio.CancelledError:
            self.observe(req.method, CANCELLED, _now() - start)
            raise
        self.observe(req.method, resp.status, _now() - start)
        return resp

    def handle_soon(self, req: FastRequest) -> web.StreamResponse | JsonReply | Pending | None:
        """`handle` without a coroutine, when the handler can (module rules)."""
        soon = self._soon.get(req.method)
        if soon is None:
            return None
        request = cast(web.Request, req)
        start = _now()
        try:
            out = soon(request, req.body)
        except Exception as exc:
            out = error_reply(exc, request)
        if out is None:
            return None
        if isinstance(out, Pending):
            out.start = start
            return out
        self.observe(req.method, out.status, _now() - start)
        return out

    def settle(self, req: FastRequest, pending: Pending) -> web.StreamResponse | JsonReply | None:
        """The reply of `pending`, its future done; None: nothing to send (cancelled: the
        client went away), or `handle` must serve `req` (RetryWrite)."""
        try:
            resp = pending.finish()
        except RetryWrite:
            return None
        except asyncio.CancelledError:
            self.observe(req.method, CANCELLED, _now() - pending.start)
            return None
        except Exception as exc:
            resp = error_reply(exc, cast(web.Request, req))
        self.observe(req.method, resp.status, _now() - pending.start)
        return resp

    def observe(self, method: str, status: int, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.observe(self._names[method], status, seconds)


FAST_ROUTES: Final = web.AppKey("fast_routes", FastRoutes)


class FastServer:
    """The fast listener's protocol factory and connection registry."""

    def __init__(
        self,
        routes: FastRoutes,
        aiohttp_handler: Callable[[], RequestHandler] | None,
        *,
        keepalive_s: float,
        body_timeout_s: float,
        max_line_bytes: int,
        max_field_bytes: int,
    ) -> None:
        self.routes = routes
        self.methods = routes.methods
        self.aiohttp_handler = aiohttp_handler
        self.loop = asyncio.get_running_loop()
        self.connections: set[FastProtocol] = set()
        self.keepalive_s = keepalive_s
        self.body_timeout_s = body_timeout_s
        self.max_line_bytes = max_line_bytes
        self.max_field_bytes = max_field_bytes
        # A header block longer than this is handed to aiohttp, whose limits refuse it.
        self.max_head_bytes = max_line_bytes + 4 * max_field_bytes
        self.max_connections: int | None = None
        self.other_connections: Callable[[], int] = lambda: 0  # aiohttp's (handed off)
        self._drained: asyncio.Event | None = None  # set by shutdown
        self.ended = 0  # connections closed or handed on so far (a read worker reports it)
        # The node's read workers, when it has any (read_workers.py).
        self.workers: ReadWorkers | None = None
        # In a read worker: gives a connection (and its unanswered bytes) back to the node.
        self.hand_back: Callable[[asyncio.Transport, bytes], None] | None = None
        # In a read worker: True once the node refuses reads (read_gate.py); checked just
        # before a reply is written, which then goes back to the node instead.
        self.replies_refused: Callable[[], bool] | None = None

    def forget(self, conn: FastProtocol) -> None:
        """`conn` is closed or handed off."""
        if conn in self.connections:
            self.connections.remove(conn)
            self.ended += 1
        if self._drained is not None and not self.connections:
            self._drained.set()

    def __call__(self) -> FastProtocol:
        return FastProtocol(self)

    def at_capacity(self) -> int | None:
        """The cap when it is reached (fast and handed-off connections together), else None."""
        cap = self.max_connections
        held = len(self.connections) + self.other_connections()
        if self.workers is not None:
            held += self.workers.connections()
        if cap is not None and held >= cap:
            return cap
        return None

    def reserve(self, length: int) -> bool:
        """Reserve `length` body bytes in the gate (False: over the cap or the bound)."""
        gate = self.routes.gate
        if length > gate.max_body_bytes:
            return False
        if gate.in_flight + length > gate.limits.max_inflight_body_bytes:
            return False
        gate.in_flight += length
        return True

    def release(self, length: int) -> None:
        self.routes.gate.in_flight -= length

    async def shutdown(self, timeout: float) -> None:
        """Close idle connections now, busy ones after their reply; abort what is left."""
        self._drained = asyncio.Event()
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections:
            try:
                async with asyncio.timeout(timeout):
                    await self._drained.wait()
            except TimeoutError:
                for conn in list(self.connections):
                    conn.abort()
