"""The lean HTTP/1.1 engine (`server.http_engine: fast`): the hot /kv routes without aiohttp's
per-request machinery, everything else still served by aiohttp on the same connection.

Rules:
- One asyncio Protocol per connection parses with httptools (llhttp: the parser aiohttp's own C
  extension and uvicorn use; no parser of ours). `PUT`, `GET` and `DELETE /kv/{key}` are served
  by calling the SAME handlers as the aiohttp app (`KvRoutes`, through `FastRoutes`) with a
  `FastRequest`, so replies, errors, auth, forwarding and metrics come from the same code.
- Anything else is HANDED OFF: the bytes of the request (kept until it is answered) are replayed
  into a fresh aiohttp RequestHandler made by the app's own server, which owns the connection
  from then on. Handed off: every other route, HTTP/1.0, absolute or fragment targets, dot
  segments, `Expect`, `Content-Encoding`, `Transfer-Encoding`, `Upgrade`, a body on GET/DELETE,
  a body over the app's bound or past the in-flight cap, over-long lines or header blocks,
  and anything the parser refuses. So every error the fast path does not make itself is
  aiohttp's own, byte for byte. Replies to requests before it on the connection go out first
  (the handing on itself: fast_handoff.py).
- A reply carries exactly the headers aiohttp sends (the handler's, in order, then
  Content-Length, Content-Type default, Date, Server, `Connection: close`), checked by a test
  that compares both engines' bytes.
- Message boundaries: llhttp accepts only CRLF line ends, so a header block ends at the first
  CRLFCRLF after the message start (CR/LF between messages skipped), and a fast message has a
  Content-Length body (chunked is handed off). That is how the buffer is trimmed and how a
  handed-off request is found in it.
- Limits as in limits.py: the keep-alive idle timeout (also before the first request), the
  connection cap (one count with the handed-off connections), the body timeout (408, closed),
  the in-flight body bytes (BodyGate's own counter, reserved from headers to reply), and a
  request whose client disconnects is cancelled. Pipelined requests are answered in order; at
  most MAX_PIPELINED wait before reading pauses.
- One request is answered at a time, in order, by one of three paths (`FastRoutes`): at once
  inside `data_received` (a stale GET: no task, no coroutine), from a done-callback of the
  node's own waiter future (a linearizable GET, PUT, DELETE: `Pending`), or by a task running
  the coroutine handler (everything else). The next request is taken after the reply is
  written.
- Read workers (`read_workers.py`): a connection whose first request is a stale GET may move to a
  worker process (its descriptor and the bytes since that request; the node keeps a share).
  In a worker, what it does not serve goes back to the node, not to aiohttp (`hand_back`),
  with that request's bytes and all after it: a handler's `HandBack`, and a reply made once
  the node refuses reads (`_refused`, read_gate.py). Request and reply: `fast_request.py`.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any, Final, cast

import httptools
import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from raftkv.server.errors import error_response
from raftkv.server.fast_handoff import HandOffs
from raftkv.server.fast_request import FastRequest, HandBack, JsonReply, Pending, serialize
from raftkv.server.limits import too_many_connections

if TYPE_CHECKING:
    from raftkv.server.fast_routes import FastServer

log = structlog.get_logger(__name__)

MAX_HEADERS: Final = 128  # aiohttp's parser refuses more (handed off, so it does)
MAX_PIPELINED: Final = 16  # parsed requests waiting for their turn before reading pauses
_KV: Final = b"/kv/"
_CRLFCRLF: Final = b"\r\n\r\n"
_STALE: Final = b"consistency=stale"
_METHODS: Final = {b"GET": "GET", b"PUT": "PUT", b"DELETE": "DELETE"}  # as str, once
# Request headers that make a request aiohttp's (see the rules).
_HANDED_OFF_HEADERS: Final = frozenset(
    {b"expect", b"content-encoding", b"transfer-encoding", b"upgrade"}
)


class _HandOff(Exception):
    """Raised from a parser callback: this request is aiohttp's (the parser stops there)."""


def _internal_error(req: FastRequest) -> web.Response:
    """The reply when a handler's error could not be answered: a bug of ours (logged)."""
    log.exception("unexpected error", method=req.method, path=req.path)
    resp = error_response(500, "internal_error", "internal server error")
    resp.force_close()  # as aiohttp does after a handler's exception
    return resp


class FastProtocol(HandOffs, asyncio.Protocol):
    """One client connection (see the module rules)."""

    def __init__(self, server: FastServer, initial: bytes = b"", *, returned: bool = False) -> None:
        self._server = server
        # `initial`: bytes read before this protocol got the connection (a read worker handoff).
        self._initial = initial
        # Only a connection's first request may move it to a read worker, and never back again.
        self._fresh = not returned and server.workers is not None
        self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._stream: bytes | bytearray = b""  # received, not yet answered or handed off
        self._front = 0  # where the message being parsed starts in _stream
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._current: FastRequest | None = None  # headers parsed, body not yet complete
        self._content_length = 0
        self._queue: collections.deque[FastRequest] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._pending: Pending | None = None  # or a node future's callback answers it
        self._serving: FastRequest | None = None  # the request being answered
        self._writing_paused = False  # the client does not read its replies: wait
        self._handing_off = False
        self._to_worker: int | None = None  # the read worker the handoff goes to
        self._closing = False  # answer what is in flight, then close
        self._reading_paused = False
        self._idle_since = 0.0
        self._keepalive: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_started = 0.0

    # -- connection --------------------------------------------------------------------------

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's are not asyncio.Transport subclasses
        # A connection coming back from a read worker was admitted already: never refused.
        cap = None if self._initial else self._server.at_capacity()
        if cap is not None:
            log.warning("connection refused: too many connections", limit=cap)
            transport.write(too_many_connections(cap))
            transport.close()
            return
        self.transport = transport
        self._server.connections.add(self)
        self._idle()
        if self._initial:
            initial, self._initial = self._initial, b""
            self.data_received(initial)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._server.forget(self)
        if self.transport is None:
            return  # refused, or handed off
        self.transport = None
        self._cancel_timers()
        if self._task is not None:
            self._task.cancel()  # the client went away (aiohttp's handler_cancellation)
        if self._pending is not None:
            self._pending.future.cancel()  # the same for a callback (`_settled` counts it)
        elif self._serving is not None:  # its task may be cancelled before it ever ran
            self._release(self._serving)
        for req in self._queue:
            self._release(req)
        self._queue.clear()
        if self._current is not None:
            self._release(self._current)
            self._current = None

    def eof_received(self) -> bool | None:
        return None  # close, as aiohttp's handler does

    def data_received(self, data: bytes) -> None:
        if self._stream:
            if isinstance(self._stream, bytes):
                self._stream = bytearray(self._stream)
            self._stream += data
        else:
            self._stream = data
            self._front = 0
        waiting = len(self._queue)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # A callback's _HandOff, or bytes llhttp refuses. aiohttp's parser drops every
            # request completed in a chunk that fails to parse: so do we, and it gets them all.
            while len(self._queue) > waiting:
                self._release(self._queue.pop())
            self._front = 0
            self._start_handoff()
            return
        if self._front:
            if self._front >= len(self._stream):
                self._stream = b""
            else:
                self._stream = self._stream[self._front :]
            self._front = 0
        if self._serving is None and self._queue:
            self._next()
        if len(self._queue) >= MAX_PIPELINED:
            self._pause_reading()
        if self._current is not None:
            if self._body_timer is None:
                self._body_timer = self._loop.call_at(
                    self._body_started + self._server.body_timeout_s, self._body_timeout
                )
        elif len(self._stream) > self._server.max_head_bytes:
            self._start_handoff()  # an endless header block: aiohttp's limits refuse it

    # -- parser callbacks (httptools) ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers.clear()

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        server = self._server
        parser = self._parser
        method = _METHODS.get(parser.get_method())  # only the hot routes' methods
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        path, _, query = url.partition(b"?")
        if (
            method is None
            or method not in server.methods
            or self._handing_off
            or self._closing
            or not path.startswith(_KV)
            or len(path) == len(_KV)
            or b"/." in path
            or b"#" in url
            or len(url) > server.max_line_bytes
            or parser.get_http_version() != "1.1"
            or parser.should_upgrade()
            or len(self._headers) > MAX_HEADERS
        ):
            raise _HandOff
        content_length = 0
        pairs: list[tuple[str, str]] = []
        for name, value in self._headers:
            lower = name.lower()
            if lower in _HANDED_OFF_HEADERS or len(name) + len(value) > server.max_field_bytes:
                raise _HandOff
            if lower == b"content-length":
                content_length = int(value)
            pairs.append(
                (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            )
        if content_length and (method != "PUT" or not server.reserve(content_length)):
            raise _HandOff  # aiohttp answers 413 / 503 server_busy, or reads the odd body
        if self._fresh:
            self._fresh = False
            # Only a stale read moves a connection: a linearizable one served by a worker waits
            # for this node's fence anyway, so it gains nothing (docs/http-engine.md). A
            # routing hint only: a worker serves any read on its connections correctly.
            if method == "GET" and server.workers is not None and _STALE in query:
                self._to_worker = server.workers.choose()
                if self._to_worker is not None:
                    raise _HandOff
        req = FastRequest(
            method,
            path.decode("utf-8", "surrogateescape"),
            query.decode("utf-8", "surrogateescape"),
            CIMultiDictProxy(CIMultiDict(pairs)),
            self,
        )
        req.reserved = content_length
        req.keep_alive = parser.should_keep_alive()
        self._content_length = content_length
        self._current = req
        if content_length:
            self._body_started = self._loop.time()

    def on_message_complete(self) -> None:
        req = self._current
        assert req is not None
        self._current = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        stream = self._stream
        start = self._front
        while stream[start] in b"\r\n":  # empty lines llhttp skips between messages
            start += 1
        body_at = stream.find(_CRLFCRLF, start) + 4
        end = body_at + self._content_length
        if self._content_length:
            req.body = bytes(stream[body_at:end])
        self._front = end
        if self._server.hand_back is not None:
            req.raw = bytes(stream[start:end])
        self._fresh = False
        self._queue.append(req)  # served once the whole chunk parsed (data_received)

    # -- serving -----------------------------------------------------------------------------

    def _next(self) -> None:
        """Serve the queued requests in order: at once where the handler can (a stale GET),
        else through a node future's callback or a task; the next one after its reply."""
        self._task = self._serving = self._pending = None
        while True:
            if self._writing_paused:  # resume_writing calls again
                self._pause_reading()
                return
            if self._reading_paused and not self._handing_off and len(self._queue) < MAX_PIPELINED:
                self._resume_reading()
            if not self._queue or self.transport is None:
                break
            req = self._queue.popleft()
            self._serving = req
            try:
                out = self._server.routes.handle_soon(req)
            except Exception:  # as in _serve: an error reply that cannot be made
                out = _internal_error(req)
            if out is None:
                self._task = self._loop.create_task(self._serve(req))
                return
            if isinstance(out, Pending):
                self._pending = out
                out.future.add_done_callback(self._settled)
                return
            self._release(req)
            if not self._reply(req, out):
                return
            self._serving = None
        if self._handing_off:
            self._hand_off()
        elif self._closing:
            self._close()
        else:
            self._idle()

    def _settled(self, fut: asyncio.Future[Any]) -> None:
        pending, req = self._pending, self._serving
        if pending is None or req is None or pending.future is not fut:
            return  # cannot happen (one request in progress at a time); be safe
        self._pending = None
        try:
            resp = self._server.routes.settle(req, pending)
        except Exception:  # as in _serve
            resp = _internal_error(req)
        if resp is None and not fut.cancelled() and self.transport is not None:
            # RetryWrite: the coroutine proposes it again (and releases the body).
            self._task = self._loop.create_task(self._serve(req))
            return
        self._release(req)
        if resp is None:  # cancelled: the client went away, or an abort: nothing to send
            self._serving = None
        elif self.transport is not None and self._reply(req, resp):
            self._next()

    async def _serve(self, req: FastRequest) -> None:
        try:
            resp = await self._server.routes.handle(req)
        except HandBack:
            self._release(req)
            self._hand_back(req)
            return
        except Exception:  # handle() answers every error itself: this is a bug of ours
            resp = _internal_error(req)
        finally:
            self._release(req)
        if self.transport is not None and self._reply(req, resp):
            self._next()

    def _reply(self, req: FastRequest, resp: web.StreamResponse | JsonReply) -> bool:
        """Send `resp`; False when the connection closes after it (or is gone)."""
        transport = self.transport
        if transport is None:
            return False
        keep_alive = req.keep_alive and not self._closing and resp.keep_alive is not False
        try:
            data = (
                resp.render(keep_alive)
                if isinstance(resp, JsonReply)
                else serialize(resp, keep_alive)
            )
        except (TypeError, ValueError):
            log.exception("cannot send a reply", method=req.method, path=req.path)
            data = serialize(error_response(500, "internal_error", "internal server error"), False)
            keep_alive = False
        if self._refused(req):  # just before the write: a read worker's gate
            return False
        transport.write(data)
        if not keep_alive:
            self._task = self._serving = None
            self._close()
        return keep_alive

    def _release(self, req: FastRequest) -> None:
        if req.reserved:
            self._server.release(req.reserved)
            req.reserved = 0

    # -- timers ------------------------------------------------------------------------------

    def _idle(self) -> None:
        self._idle_since = self._loop.time()
        if self._keepalive is None and self._server.keepalive_s > 0:
            self._keepalive = self._loop.call_at(
                self._idle_since + self._server.keepalive_s, self._check_idle
            )

    def _check_idle(self) -> None:
        # As aiohttp: idle means no request in progress; half a request line or header block
        # does not keep a connection open (only a body has its own timer). The timer stays
        # armed while requests come and go (cheaper than one timer per request).
        self._keepalive = None
        if self.transport is None:
            return
        now = self._loop.time()
        if self._serving is not None or self._current is not None or self._queue:
            self._keepalive = self._loop.call_at(now + self._server.keepalive_s, self._check_idle)
            return
        close_at = self._idle_since + self._server.keepalive_s
        if now >= close_at:
            self._close()
        else:
            self._keepalive = self._loop.call_at(close_at, self._check_idle)

    def _cancel_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    def _cancel_timers(self) -> None:
        self._cancel_keepalive()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timeout(self) -> None:
        """The body did not arrive in time: 408, connection closed (as limits.BodyGate)."""
        self._body_timer = None
        req, transport = self._current, self.transport
        if req is None or transport is None:
            return
        self._current = None
        self._release(req)
        ms = self._server.body_timeout_s * 1000
        resp = error_response(408, "body_timeout", f"request body not received within {ms:.0f} ms")
        self._server.routes.observe(req.method, 408, self._loop.time() - self._body_started)
        if self._serving is not None:
            # The reply in progress goes first, then the connection closes (`_closing`); the
            # 408 is dropped, and nothing more is read: the rest of that body has nowhere to go.
            self._closing = True
            self._pause_reading()
            return
        transport.write(serialize(resp, False))
        self._close()

    # -- flow control --------------------------------------------------------------------------

    def pause_writing(self) -> None:
        # The transport's buffer is over its high-water mark: answer nothing more (and read
        # nothing more) until the client takes its replies, as aiohttp's drain does.
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._serving is None and self.transport is not None:
            self._next()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def _close(self) -> None:
        self._cancel_timers()
        if self.transport is not None:
            self.transport.close()

    def shutdown(self) -> None:
        """Stop taking requests: close now if idle, else after the reply in progress."""
        self._closing = True
        if self._serving is None and not self._queue:
            self._close()

    def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._pending is not None:
            self._pending.future.cancel()
        if self.transport is not None:
            self.transport.abort()

    # -- handing a connection to aiohttp -------------------------------------------------------

    def _start_handoff(self) -> None:
        if self.transport is None:
            return
        self._handing_off = True
        if self._current is not None:  # cannot happen (handed off at its headers); be safe
            self._release(self._current)
            self._current = None
        self._cancel_timers()
        self._pause_reading()
        if self._serving is None:
            self._next()  # hands off now, or once the replies before it are out

    def _returned(self, rest: bytes) -> FastProtocol:
        """This connection back from a read worker that could not take it (fast_handoff.py)."""
        return FastProtocol(self._server, rest, returned=True)
