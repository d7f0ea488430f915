"""Serving the app: HTTP parser limits, JSON errors from the parser, start and stop.

Rules:
- The request line must fit a 4 KiB key fully percent-encoded (3 x 4096 characters) plus the
  method, a query and slack; aiohttp's default (8190) would refuse keys of ~2.7 KiB that way.
- Errors the HTTP parser raises before any handler runs (malformed request, line too long) are
  answered in the API's JSON error shape, not aiohttp's text/plain. aiohttp has no hook for
  this: `_JsonErrorServer` makes aiohttp's `Server` create `_JsonErrorRequestHandler`s, whose
  `handle_error` renders JSON. Covered by tests that send such requests to `run_http`.
- Client errors are logged at warning without a traceback; a 500 is a bug and keeps one.
- Hardening (limits.py): idle keep-alive connections close after `keepalive_timeout_ms`;
  connections past `max_connections` get a canned 503 `too_many_connections` and are closed
  before aiohttp registers them; request bodies are never decompressed.
- The access log is on only at debug level (a line per request costs more than the request).
- `server.http_engine: fast` serves the hot /kv routes with the fast engine (`fast_http.py`,
  `fast_routes.py`) on the same listener, handing every other request's connection to this
  aiohttp server; with the access log on (debug level) aiohttp serves everything, since only
  it writes access lines.
- A request whose client disconnects is cancelled (`handler_cancellation`): the node's
  operations must tolerate cancellation (runtime/api.py says so).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from http import HTTPStatus
from typing import Any, Final, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from raftkv.server.config import Settings
from raftkv.server.errors import error_response, http_error_code
from raftkv.server.fast_routes import FAST_ROUTES, FastRoutes, FastServer
from raftkv.server.inputs import MAX_KEY_BYTES
from raftkv.server.limits import too_many_connections
from raftkv.server.read_workers import ReadWorkers, make_read_workers
from raftkv.server.tls import scheme, server_context

log = structlog.get_logger(__name__)

MAX_LINE_SIZE: Final = 3 * MAX_KEY_BYTES + 4096
MAX_FIELD_SIZE: Final = 3 * MAX_KEY_BYTES + 4096
SHUTDOWN_TIMEOUT_S: Final = 5.0


def server_kwargs(settings: Settings) -> dict[str, Any]:
    """aiohttp RequestHandler arguments (Application(handler_args=...) or AppRunner kwargs)."""
    return {
        "max_line_size": MAX_LINE_SIZE,
        "max_field_size": MAX_FIELD_SIZE,
        # Cancel a request's task when its client disconnects. Besides not working for nobody,
        # this ends aiohttp's "lingering" drain of a body we refused: that read is not woken
        # by a disconnect and would otherwise sit for lingering_time, and hold up shutdown.
        "handler_cancellation": True,
        # limits.py: idle keep-alive connections are closed (aiohttp's default: an hour), and
        # compressed bodies are never inflated (the body middleware refuses them with 415).
        "keepalive_timeout": settings.http_limits.keepalive_timeout_ms / 1000,
        "auto_decompress": False,
    }


def http_ssl_context(runner: web.AppRunner) -> ssl.SSLContext | None:
    """The live context of a runner made by `run_http` (None: plain HTTP)."""
    return runner.ssl_context if isinstance(runner, _JsonErrorAppRunner) else None


async def run_http(app: web.Application, settings: Settings) -> web.AppRunner:
    """Start serving `app` on settings.http_listen. Stop with `await runner.cleanup()`."""
    access_log = logging.getLogger("aiohttp.access") if settings.log_level == "debug" else None
    runner = _JsonErrorAppRunner(
        app,
        max_connections=settings.http_limits.max_connections,
        access_log=access_log,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        **server_kwargs(settings),
    )
    await runner.setup()
    try:
        runner.ssl_context = server_context(settings)
        fast = app.get(FAST_ROUTES)
        site_class: type[web.TCPSite] = web.TCPSite
        if settings.http_engine == "fast" and fast is not None and access_log is None:
            site_class = functools.partial(_FastSite, fast=fast, settings=settings)  # type: ignore[assignment]
        site = site_class(
            runner,
            settings.http_listen.host,
            settings.http_listen.port,
            reuse_address=True,
            ssl_context=runner.ssl_context,
        )
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info(
        "http listening",
        listen=str(settings.http_listen),
        advertised=str(settings.http_address),
        scheme=scheme(settings),
        engine="fast" if isinstance(site, _FastSite) else "aiohttp",
    )
    return runner


class _JsonErrorRequestHandler(RequestHandler):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if isinstance(manager, _JsonErrorServer) and (cap := manager.at_capacity()) is not None:
            # Refused before aiohttp sees it: not registered, no task, no keep-alive timer.
            # connection_lost returns at once for a handler without a manager.
            log.warning("connection refused: too many connections", limit=cap)
            cast(asyncio.Transport, transport).write(too_many_connections(cap))
            transport.close()
            self._manager = None
            return
        super().connection_made(transport)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of a reply is out; the connection is broken (same as aiohttp's handler).
            raise ConnectionError("response already started, cannot send an error")
        if status >= 500:
            log.error("error handling request", exc_info=exc)
            resp = error_response(status, "internal_error", "internal server error")
        else:
            detail = _short(message or (str(exc) if exc else ""))
            log.warning("bad request", status=status, error=detail)
            if isinstance(exc, LineTooLong):
                code, words = "line_too_long", "request line or header line too long"
            elif isinstance(exc, BadStatusLine):
                code, words = "bad_request_line", "malformed request line"
            else:
                code, words = http_error_code(status, HTTPStatus(status).phrase)
            resp = error_response(status, code, words, detail=detail)
        resp.force_close()  # the parser's state is unknown: never reuse this connection
        return resp


class _JsonErrorServer(web.Server):
    max_connections: int | None = None  # None: no cap (set by adopt)

    @classmethod
    def adopt(cls, server: web.Server, max_connections: int | None) -> _JsonErrorServer:
        """The same server (handler, request factory, arguments) creating our handlers."""
        adopted = cls(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
        adopted.max_connections = max_connections
        return adopted

    fast: FastServer | None = None  # the fast engine's listener, when it serves

    def at_capacity(self) -> int | None:
        """The cap when it is reached (the fast engine's connections count too), else None."""
        cap = self.max_connections
        count = len(self._connections) + (len(self.fast.connections) if self.fast else 0)
        return cap if cap is not None and count >= cap else None

    def connection_count(self) -> int:
        return len(self._connections)

    def __call__(self) -> RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class _JsonErrorAppRunner(web.AppRunner):
    def __init__(
        self, app: web.Application, *, max_connections: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._max_connections = max_connections
        self.ssl_context: ssl.SSLContext | None = None  # the HTTPS listener's (tls.reload)

    async def _make_server(self) -> web.Server:
        # The app builds its Server (startup, freezing, handler_args); we swap the class only.
        server = await super()._make_server()
        return _JsonErrorServer.adopt(server, self._max_connections)


class _FastSite(web.TCPSite):
    """A TCP site whose connections start on the fast engine (runner rules)."""

    def __init__(
        self, runner: web.BaseRunner, *args: Any, fast: FastRoutes, settings: Settings, **kw: Any
    ) -> None:
        super().__init__(runner, *args, **kw)
        self._fast_routes = fast
        self._settings = settings
        self._fast: FastServer | None = None
        self._workers: ReadWorkers | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site; TCPSite.start would listen
        server = self._runner.server
        assert isinstance(server, _JsonErrorServer)
        limits = self._settings.http_limits
        fast = FastServer(
            self._fast_routes,
            server,
            keepalive_s=limits.keepalive_timeout_ms / 1000,
            body_timeout_s=limits.body_timeout_ms / 1000,
            max_line_bytes=MAX_LINE_SIZE,
            max_field_bytes=MAX_FIELD_SIZE,
        )
        fast.max_connections = server.max_connections
        fast.other_connections = server.connection_count
        server.fast = self._fast = fast
        make_workers = make_read_workers(self._fast_routes.node, self._settings, fast)
        if make_workers is not None:
            self._workers = make_workers()
            await self._workers.start()
            fast.workers = self._workers
        self._server = await asyncio.get_running_loop().create_server(
            fast,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await super().stop()  # the listener closes
        if self._workers is not None:  # their connections come back or close first
            await self._workers.stop()
        if self._fast is not None:
            await self._fast.shutdown(SHUTDOWN_TIMEOUT_S)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
