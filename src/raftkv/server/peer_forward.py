"""Forwarding writes over the peer connection (`server.forward_over_peer`): both ends.

Rules (forward.py's rules hold; these say how they hold on this path):
- Only `PUT` and `DELETE /kv/{key}` go this way, and only to a leader whose live peer link
  announced forwarding (`PeerTransport.forwarding_version`); anything else, or a leader that
  did not (an older node, or the option off there), is forwarded over HTTP as before.
- Follower (`PeerForwardClient`): the requests forwarded during one loop turn leave as ONE
  `ForwardBatch` frame per leader (split only to stay under the frame limit), written at the
  start of the next turn. Attribution, as the HTTP client's:
  * `NotSent` — the frame was not handed to the socket (link down, peer not announcing, too
    large, buffer full, too many in flight): nothing was sent; the caller falls back to HTTP.
  * `MaybeSent` — the frame was handed to the socket and the link (to the leader, or the
    leader's link back to us, which carries the reply) ended before the reply came.
  * `TimedOut` — no reply by the deadline (a MaybeSent that is never re-sent).
  Nothing here ever sends a request twice; the caller re-sends a session write once (over
  HTTP, on a fresh connection), exactly as forward.py does. A late reply is dropped.
- Leader (`PeerForwardServer`): every request of a batch is run at once — without a task when
  the handler can (`FastRoutes.handle_soon`, as on the fast engine), else each in its own
  task — through the SAME hot-route handlers and wrapping as an HTTP request (metrics, JSON
  errors, `auth.enabled`'s checks of the CLIENT's credentials from its own Authorization
  header), so their proposals share a Ready. The request carries only the
  headers of `FORWARDED_REQUEST_HEADERS` (the client's), `Content-Length` of the body, and
  no transport: no client certificate, so no member rights. It is marked forwarded by the
  link's authenticated peer, so a node that lost leadership answers 503 `not_leader` instead
  of forwarding again (tls.forwarded_by). Body bytes are counted in the HTTP body gate
  (413 `request_too_large`, 503 `server_busy` as for HTTP); at most MAX_IN_FLIGHT per peer
  (then 503 `server_busy`). The replies finished during one loop turn go back as one
  `ForwardReplies` frame per peer: status, body and the headers forward.py passes back, so the
  follower answers the client exactly as the leader would have. The frame is queued on the
  link (`queue_forward`) at the start of the link's flush of that turn, so it leaves in the
  same socket write as the Raft messages to that peer (issue 12: one write per turn, not two).
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, cast

import structlog
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

from raftkv.codec.forward import (
    MAX_FORWARDS,
    ForwardBatch,
    ForwardedReply,
    ForwardedRequest,
    ForwardReplies,
)
from raftkv.raft.types import NodeId
from raftkv.server.errors import JSON_CONTENT_TYPE, ApiError, error_response
from raftkv.server.fast_request import FastRequest, JsonReply, Pending
from raftkv.server.forward import (
    FORWARDED_REQUEST_HEADERS,
    passed_back,
    request_target,
)
from raftkv.server.forward_client import MaybeSent, NotSent, TimedOut

if TYPE_CHECKING:
    from raftkv.server.fast_http import FastProtocol
    from raftkv.server.fast_routes import FastRoutes
    from raftkv.transport.tcp import PeerTransport

log = structlog.get_logger(__name__)

MAX_IN_FLIGHT: Final = 4096  # forwarded requests in flight per leader (follower) / peer (leader)
_OVERHEAD: Final = 64  # per request or reply in a frame: the id, status, msgpack headers
_ALLOWED: Final = {name.lower(): name for name in FORWARDED_REQUEST_HEADERS}
_REVISION_TAG: Final = re.compile(r'"[0-9]{1,20}"\Z')  # kv_params.etag's form


def peer_forwardable(request: web.Request) -> bool:
    """Is `request` one this path carries (PUT or DELETE of one key)?"""
    return request.method in ("PUT", "DELETE") and request_target(request).startswith("/kv/")


def _utf8(target: str, headers: Iterable[tuple[str, str]]) -> bool:
    """Can the target and header values travel as msgpack strings (UTF-8)? A client's
    non-UTF-8 bytes arrive as lone surrogates (surrogateescape), which cannot."""
    try:
        target.encode()
        for _, value in headers:
            value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _size(headers: Iterable[tuple[str, str]], *parts: str | bytes) -> int:
    return _OVERHEAD + sum(len(n) + len(v) for n, v in headers) + sum(len(p) for p in parts)


class SentForward:
    """One request handed to `PeerForwardClient.send_soon`: its reply future (the leader's
    `ForwardedReply`, or NotSent/MaybeSent/TimedOut), until `PeerForwardClient.settled`."""

    __slots__ = ("batch", "future", "id", "leader")

    def __init__(self, future: asyncio.Future[ForwardedReply], leader: str, req_id: int) -> None:
        self.future = future
        self.leader = leader
        self.id = req_id
        self.batch: _Batch | None = None  # set once sent


class _Batch:
    """The requests of one sent frame: they share a deadline, so they share ONE timer (a timer
    per request cost a loop timer handle each on the loaded follower), cancelled once every
    request of the frame is finished."""

    __slots__ = ("left", "pending", "timer")

    def __init__(self, pending: list[SentForward]) -> None:
        self.pending = pending
        self.left = len(pending)  # requests of the frame not finished yet
        self.timer: asyncio.TimerHandle | None = None

    def finished_one(self) -> None:
        self.left -= 1
        if self.left == 0 and self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.pending = []

    def expire(self) -> None:
        self.timer = None
        for pending in self.pending:
            if not pending.future.done():
                pending.future.set_exception(
                    TimedOut("no reply from the leader before the request's deadline")
                )


class PeerForwardClient:
    """The follower's side (see the module rules)."""

    def __init__(self, link: PeerTransport, *, total_timeout_s: float) -> None:
        self._link = link
        self._total_timeout_s = total_timeout_s
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._queued: dict[str, list[tuple[ForwardedRequest, SentForward]]] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._in_flight: dict[int, SentForward] = {}  # sent, reply due
        self._closed = False

    def usable(self, leader_id: str) -> bool:
        return not self._closed and self._link.forwarding_version(NodeId(leader_id)) >= 1

    async def forward(self, request: web.Request, body: bytes, leader_id: str) -> web.Response:
        """Send `request` to `leader_id` in this turn's batch; its reply as the client gets
        it. Raises NotSent, MaybeSent or TimedOut."""
        sent = self.send_soon(request, body, leader_id)
        try:
            reply = await sent.future
        finally:
            self._forget(sent)
        return relayed_response(reply)

    def send_soon(self, request: web.Request, body: bytes, leader_id: str) -> SentForward:
        """`forward` without a coroutine (the fast engine's hot path, `http._Api.forward_soon`):
        `request` joins this turn's batch. Raises NotSent (nothing queued); the caller must
        call `settled` once the future is done, whatever its outcome."""
        if self._closed or len(self._in_flight) >= MAX_IN_FLIGHT:
            raise NotSent("no room for another forward over the peer link")
        req_headers = request.headers
        headers = tuple(
            (name, value)
            for name in FORWARDED_REQUEST_HEADERS
            if (value := req_headers.get(name)) is not None
        )
        target = request_target(request)
        if not _utf8(target, headers):
            # msgpack strings are UTF-8; the HTTP path passes the client's bytes through as
            # they came (surrogateescape). Nothing was sent: HTTP takes it.
            raise NotSent("a header value or the target is not UTF-8")
        fwd = ForwardedRequest(next(self._ids), request.method, target, headers, body)
        sent = SentForward(self._loop.create_future(), leader_id, fwd.id)
        self._queued.setdefault(leader_id, []).append((fwd, sent))
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)
        return sent

    def settled(self, sent: SentForward) -> ForwardedReply:
        """The leader's reply to `sent` (its future done), or its NotSent, MaybeSent, TimedOut
        or CancelledError; `sent` is forgotten (its frame's timer, the in-flight slot)."""
        try:
            return sent.future.result()
        finally:
            self._forget(sent)

    def _forget(self, sent: SentForward) -> None:
        if sent.batch is not None:
            sent.batch.finished_one()
            sent.batch = None  # counted once
        self._in_flight.pop(sent.id, None)

    def _flush(self) -> None:
        """Start of the next turn: one frame per leader for everything queued in the last."""
        self._flush_handle = None
        queued, self._queued = self._queued, {}
        budget = self._link.max_frame_bytes // 2  # headroom for msgpack's own framing
        deadline = self._loop.time() + self._total_timeout_s
        for leader, items in queued.items():
            start = 0
            while start < len(items):
                end, size = start, 0
                while end < len(items) and end - start < MAX_FORWARDS:
                    req = items[end][0]
                    size += _size(req.headers, req.target, req.body)
                    if end > start and size > budget:
                        break
                    end += 1
                self._send(leader, items[start:end], deadline)
                start = end

    def _send(
        self, leader: str, items: list[tuple[ForwardedRequest, SentForward]], deadline: float
    ) -> None:
        live = [(req, p) for req, p in items if not p.future.done()]  # cancelled: not sent
        if not live:
            return
        batch = ForwardBatch(tuple(req for req, _ in live))
        try:
            taken = self._link.send_forward(NodeId(leader), batch)
        except Exception as exc:  # encoding fails before any byte is written: none was sent
            log.warning("forward batch not encodable", leader=leader, error=repr(exc))
            taken = False
        if not taken:
            for _, p in live:
                p.future.set_exception(NotSent("the peer link to the leader took no frame"))
            return
        sent = _Batch([p for _, p in live])
        for req, p in live:
            self._in_flight[req.id] = p
            p.batch = sent
        sent.timer = self._loop.call_at(deadline, sent.expire)

    def take_replies(self, peer: str, frame: ForwardReplies) -> None:
        for reply in frame.replies:
            pending = self._in_flight.pop(reply.id, None)
            if pending is None or pending.leader != peer:
                if pending is not None:  # not this peer's to answer: leave it waiting
                    self._in_flight[reply.id] = pending
                log.debug("late or unknown forward reply dropped", peer=peer, id=reply.id)
                continue
            if not pending.future.done():
                pending.future.set_result(reply)

    def link_down(self, peer: str) -> None:
        """A link to or from `peer` ended: what we sent it may or may not have arrived."""
        for pending in list(self._in_flight.values()):
            if pending.leader == peer and not pending.future.done():
                pending.future.set_exception(
                    MaybeSent("the peer link to the leader ended before the reply")
                )

    def close(self) -> None:
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for items in self._queued.values():
            for _, p in items:
                if not p.future.done():
                    p.future.set_exception(NotSent("the node is stopping"))
        self._queued.clear()
        for p in self._in_flight.values():
            if not p.future.done():
                p.future.set_exception(MaybeSent("the node is stopping"))


class PeerRequest(FastRequest):
    """A forwarded request as the leader's handlers see it: no connection of its own."""

    def __init__(self, req: ForwardedRequest, headers: CIMultiDictProxy[str], peer: str) -> None:
        path, _, query = req.target.partition("?")
        # The protocol is used only by `transport` and `remote`, both overridden here.
        super().__init__(req.method, path, query, headers, cast("FastProtocol", None))
        self.body = req.body
        self.forwarded_by_peer = peer  # proven by the peer link (tls.forwarded_by)

    @property
    def transport(self) -> asyncio.Transport | None:
        return None  # no client certificate: a forwarded request has no member rights

    @property
    def remote(self) -> str | None:
        return None


def reply_of(req_id: int, resp: web.StreamResponse | JsonReply) -> ForwardedReply:
    """What the follower needs of the leader's reply: as `fast_http.serialize` would send it,
    reduced to the headers forward.py passes back."""
    if isinstance(resp, JsonReply):  # json_response's headers, in its order
        tagged = [] if resp.etag is None else [("ETag", resp.etag)]  # str, not hdrs' istr
        kept = tuple(passed_back([*tagged, ("Content-Type", JSON_CONTENT_TYPE)]).items())
        return ForwardedReply(req_id, resp.status, kept, resp.body)
    body = resp.body if isinstance(resp, web.Response) else None
    if not isinstance(body, bytes | bytearray) or resp.chunked or resp.compression:
        log.error("cannot forward a reply back", type=type(resp).__name__)
        return reply_of(req_id, error_response(500, "internal_error", "internal server error"))
    headers = list(resp.headers.items())
    if body and hdrs.CONTENT_TYPE not in resp.headers:
        headers.append((hdrs.CONTENT_TYPE, "application/octet-stream"))
    # str(): aiohttp's header names are multidict `istr`, which the encoder does not take.
    kept = tuple((str(name), str(value)) for name, value in passed_back(headers).items())
    return ForwardedReply(req_id, resp.status, kept, bytes(body))


def relayed_response(reply: ForwardedReply) -> web.Response:
    """The leader's reply as the follower answers its client (forward.py passes the same)."""
    return web.Response(status=reply.status, body=reply.body, headers=passed_back(reply.headers))


def relayed(reply: ForwardedReply) -> web.Response | JsonReply:
    """`relayed_response`, as a `JsonReply` (the same bytes, without building an aiohttp
    Response) when the reply is the hot routes' 200: exactly `reply_of`'s JSON headers, its
    ETag a revision tag. Anything else, from any peer, takes the checked path."""
    if reply.status == 200:
        match reply.headers:
            case (("Content-Type", "application/json"),):
                return JsonReply(reply.body)
            case (("ETag", str(tag)), ("Content-Type", "application/json")) if _REVISION_TAG.match(
                tag
            ):
                return JsonReply(reply.body, tag)
    return relayed_response(reply)


def _internal_error(req: ForwardedRequest) -> web.Response:
    """The reply when a handler failed unexpectedly on a forwarded request (logged)."""
    log.exception(
        "unexpected error on a forwarded request", method=req.method, path=req.target.split("?")[0]
    )
    return error_response(500, "internal_error", "internal server error")


class PeerForwardServer:
    """The leader's side (see the module rules)."""

    def __init__(self, link: PeerTransport, routes: FastRoutes) -> None:
        self._link = link
        self._routes = routes
        self._loop = asyncio.get_running_loop()
        self._replies: dict[str, list[ForwardedReply]] = {}
        self._flush_due = False  # a before_flush hook is registered with the link
        self._closed = False
        self._in_flight: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: set[Pending] = set()  # requests waiting for a node future's callback

    def take_batch(self, peer: str, frame: ForwardBatch) -> None:
        for req in frame.requests:
            self._take(peer, req)

    def _take(self, peer: str, req: ForwardedRequest) -> None:
        """Run `req`: answered at once or from its node future's callback when the handler
        can (`FastRoutes.handle_soon`, as on the fast engine), else in its own task."""
        count = self._in_flight.get(peer, 0)
        self._in_flight[peer] = count + 1
        admitted = self._admit(peer, req, count)
        if isinstance(admitted, web.StreamResponse):
            self._answer(peer, req, admitted, 0)
            return
        try:
            out = self._routes.handle_soon(admitted)
        except Exception:  # a bug of ours: answered (as the fast engine does), never leaked
            self._answer(peer, req, _internal_error(req), len(req.body))
            return
        if out is None:
            self._spawn(peer, req, admitted)
        elif isinstance(out, Pending):
            self._pending.add(out)
            out.future.add_done_callback(lambda _: self._settled(peer, req, admitted, out))
        else:
            self._answer(peer, req, out, len(req.body))

    def _settled(self, peer: str, req: ForwardedRequest, admitted: PeerRequest, p: Pending) -> None:
        self._pending.discard(p)
        try:
            resp: web.StreamResponse | JsonReply | None = self._routes.settle(admitted, p)
        except Exception:  # a bug of ours: answered, the gate and in-flight count released
            resp = _internal_error(req)
        if resp is not None:
            self._answer(peer, req, resp, len(req.body))
        elif p.future.cancelled() or self._closed:  # closing: no reply, as a cancelled task
            self._routes.gate.in_flight -= len(req.body)
            self._in_flight[peer] -= 1
        else:  # RetryWrite: the coroutine proposes it again
            self._spawn(peer, req, admitted)

    def _spawn(self, peer: str, req: ForwardedRequest, admitted: PeerRequest) -> None:
        task = self._loop.create_task(self._run(peer, req, admitted))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, peer: str, req: ForwardedRequest, admitted: PeerRequest) -> None:
        try:
            resp = await self._routes.handle(admitted)
        except BaseException:
            self._routes.gate.in_flight -= len(req.body)
            self._in_flight[peer] -= 1
            raise
        self._answer(peer, req, resp, len(req.body))

    def _answer(
        self, peer: str, req: ForwardedRequest, resp: web.StreamResponse | JsonReply, length: int
    ) -> None:
        self._routes.gate.in_flight -= length
        self._in_flight[peer] -= 1
        self._reply(peer, reply_of(req.id, resp))

    def _admit(
        self, peer: str, req: ForwardedRequest, count: int
    ) -> PeerRequest | web.StreamResponse:
        """The request as the handlers see it, its body counted in the gate; or the refusal."""
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in req.headers:
            canonical = _ALLOWED.get(name.lower())
            if canonical is not None:  # the client's headers that forwarding carries, only
                headers.add(canonical, value)
        headers[hdrs.CONTENT_LENGTH] = str(len(req.body))
        try:
            if count >= MAX_IN_FLIGHT:
                raise _busy("too many forwarded requests in flight from this member; retry")
            self._routes.gate.admit(len(req.body))
        except ApiError as exc:
            return exc.response()
        return PeerRequest(req, CIMultiDictProxy(headers), peer)

    def _reply(self, peer: str, reply: ForwardedReply) -> None:
        self._replies.setdefault(peer, []).append(reply)
        if not self._flush_due:
            # At the start of the link's flush of this turn, so the frame leaves in the same
            # write as the Raft messages to that peer (the commit notices, typically).
            self._flush_due = True
            self._link.before_flush(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        if self._closed:
            return
        replies, self._replies = self._replies, {}
        budget = self._link.max_frame_bytes // 2
        for peer, items in replies.items():
            start = 0
            while start < len(items):
                end, size = start, 0
                while end < len(items) and end - start < MAX_FORWARDS:
                    size += _size(items[end].headers, items[end].body)
                    if end > start and size > budget:
                        break
                    end += 1
                if not self._link.queue_forward(
                    NodeId(peer), ForwardReplies(tuple(items[start:end]))
                ):
                    # The follower fails them as outcome-unknown (link end or deadline).
                    log.info("forward replies not sent: link down", peer=peer, count=end - start)
                start = end

    async def close(self) -> None:
        self._closed = True
        for pending in list(self._pending):
            pending.future.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class PeerForwarding:
    """Both sides on one node's peer transport: the frames' handler, and the client."""

    def __init__(self, link: PeerTransport, routes: FastRoutes, *, total_timeout_s: float) -> None:
        self._link = link
        self.client = PeerForwardClient(link, total_timeout_s=total_timeout_s)
        self.server = PeerForwardServer(link, routes)
        link.set_forward_handlers(self._on_frame, self.client.link_down)

    def _on_frame(self, peer: str, frame: ForwardBatch | ForwardReplies) -> None:
        if isinstance(frame, ForwardBatch):
            self.server.take_batch(peer, frame)
        else:
            self.client.take_replies(peer, frame)

    async def close(self) -> None:
        self._link.set_forward_handlers(None, None)
        self.client.close()
        await self.server.close()


def has_session(request: web.Request) -> bool:
    """Does `request` carry a session (deduplicated by the leader, so it may be re-sent)?"""
    headers = request.headers
    return "Raftkv-Session" in headers and "Raftkv-Seq" in headers


def _busy(words: str) -> ApiError:
    return ApiError(503, "server_busy", words, headers={"Retry-After": "1"})
