"""The seed-compatible HTTP API over a `KVNode` (aiohttp).

Routes:
    PUT    /kv/{key}   JSON {"value": s} or a raw UTF-8 body -> {"key", "value", "message"}
    GET    /kv/{key}   ?consistency=linearizable (default) | lease | stale -> {"key", "value"}
    DELETE /kv/{key}   -> {"key", "message"}
    GET    /cluster/status, /cluster/local, /health, /ready (+ space alarms: `alarms.py`)
    GET    /metrics    Prometheus text format (`metrics_routes.py`)
    GET    /cluster/snapshot   a consistent snapshot of the state, for backups (`backup_routes.py`)

Rules:
- Replies match the seed README byte for byte where it shows them (field names, messages).
- Writes on a follower are forwarded once to the leader (`forward.py`); a request that was
  itself forwarded (by a member that proved it, `tls.forwarded_by`) is never forwarded again.
  With `server.forward_over_peer`, PUT and DELETE /kv/{key} go as frames on the peer link
  when the leader announced it (`peer_forward.py`), else over HTTP; HTTP also carries what
  the link did not send, and a session write's one re-send.
  Reads are served locally: a linearizable read is
  the runtime's ReadIndex, which works on any node.
- Every node call runs under `server.request_timeout_ms` (a single-key read is bounded by the
  node itself: `KVNode.read`, no second timer). Outcome mapping (`call_node`):
  NoLeaderError -> 503 no_leader (nothing was proposed; Retry-After: 1); OperationTimeout or our
  timeout -> 504 timeout (a write's outcome is unknown); NodeStopping -> 503 node_stopping;
  FeatureNotEnabled -> 503 feature_not_enabled (nothing proposed; Retry-After: 5).
- Errors are JSON (`errors.py`); inputs and limits are checked in `inputs.py` before the node is
  touched. No input may produce a 500. Request bodies are read (bounded, timed, never
  decompressed) by `limits.BodyGate` before any handler runs.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable
from typing import Final, TypeVar

import structlog
from aiohttp import web

from raftkv.kv.commands import Command
from raftkv.runtime.api import (
    FeatureNotEnabled,
    KVNode,
    NodeStopping,
    NoLeaderError,
    NotLeaderError,
    OperationTimeout,
    RetryWrite,
)
from raftkv.runtime.membership import MembershipManager
from raftkv.runtime.waiters import run_within
from raftkv.server.alarms import SpaceNode, alarm_task, disk_status, space_json
from raftkv.server.auth import Authenticator, AuthNode
from raftkv.server.auth_routes import Forwarded, add_auth_routes
from raftkv.server.background import running
from raftkv.server.backup_routes import add_backup_routes
from raftkv.server.config import Settings
from raftkv.server.errors import (
    ApiError,
    error_middleware,
    error_response,
    halted_error,
    json_response,
    node_failure,
    stopping_error,
)
from raftkv.server.fast_request import JsonReply, Pending
from raftkv.server.fast_routes import FAST_ROUTES, FastRoutes
from raftkv.server.forward import Forwarder, outcome_unknown, resolve_source_ip
from raftkv.server.forward_client import MaybeSent, NotSent, TimedOut
from raftkv.server.inputs import (
    check_content_length,
    key_from_request,
    max_body_bytes,
)
from raftkv.server.inspect_routes import add_inspect_routes
from raftkv.server.kv_routes import KvRoutes
from raftkv.server.limits import BodyGate
from raftkv.server.members_routes import add_member_routes
from raftkv.server.metrics_routes import HttpMetrics, add_metrics_routes
from raftkv.server.peer_forward import PeerForwarding, has_session, peer_forwardable, relayed
from raftkv.server.retention import retention_task
from raftkv.server.runner import server_kwargs
from raftkv.server.status import StatusProbe, cluster_status, local_status_json
from raftkv.server.tls import forwarded_by, node_client_context
from raftkv.server.txn_routes import TxnRoutes

T = TypeVar("T")
log = structlog.get_logger(__name__)

STORED_MESSAGE: Final = "Key-value pair stored successfully"
DELETED_MESSAGE: Final = "Key deleted successfully"
FORWARD_CONNECT_TIMEOUT_S: Final = 1.0
# The leader answers within its own request timeout (504 timeout at worst); wait a little longer
# so that its answer, not our guess, reaches the client.
FORWARD_GRACE_S: Final = 1.0
_KEY_PATH: Final = r"/kv/{key:[\s\S]+}"  # [\s\S]: keys may hold newlines (%0A)


def create_app(node: KVNode, settings: Settings) -> web.Application:
    """The aiohttp application serving `node`. Serve it with `runner.run_http` in production."""
    api = _Api(node, settings)
    max_body = max_body_bytes(settings.max_value_bytes)
    gate = BodyGate(settings.http_limits, max_body)
    auth = (
        Authenticator(
            node, token_ttl_s=settings.token_ttl_s, max_value_bytes=settings.max_value_bytes
        )
        if isinstance(node, AuthNode)
        else None
    )
    if settings.auth_enabled and auth is None:
        raise ValueError("auth.enabled needs a node that stores users and roles")
    # After the body gate (bounded, timed), so that a transaction's keys can be checked.
    checks = [auth.middleware] if settings.auth_enabled and auth is not None else []
    app = web.Application(
        middlewares=[error_middleware, gate.middleware, *checks],
        client_max_size=max_body,
        handler_args=server_kwargs(settings),
    )
    app.cleanup_ctx.append(api.client_sessions)
    app.cleanup_ctx.append(retention_task(node, settings.config.storage.history_revisions))
    storage = settings.config.storage
    app.cleanup_ctx.append(
        alarm_task(
            node,
            quota_bytes=storage.quota_bytes,
            min_free_bytes=storage.min_free_bytes,
            data_dir=settings.data_dir,
            host=settings.http_address.host,
            ssl_context=node_client_context(settings),
        )
    )
    kv = KvRoutes(node, settings, api)
    txn = TxnRoutes(node, settings, api)
    routes = (
        ("PUT", _KEY_PATH, kv.put),
        ("GET", _KEY_PATH, kv.get),
        ("DELETE", _KEY_PATH, kv.delete),
        ("GET", "/kv", kv.range_get),
        ("DELETE", "/kv", kv.range_delete),
        ("POST", "/txn", txn.txn),
        ("POST", "/compact", txn.compact),
        ("POST", "/session", txn.open_session),
        ("*", "/kv/", api.empty_key),
        ("*", "/kv", api.empty_key),
        ("GET", "/cluster/status", api.cluster_status),
        ("GET", "/cluster/local", api.cluster_local),
        ("GET", "/health", api.health),
        ("GET", "/ready", api.ready),
    )
    for method, path, handler in routes:
        app.router.add_route(method, path, handler, expect_handler=api.expect_continue)
    add_inspect_routes(app, node, enabled=settings.debug_endpoints)
    api.http_metrics = add_metrics_routes(app, node)
    # The same handlers for the fast engine (server.http_engine: fast, see runner.py) and for
    # writes forwarded over the peer link (peer_forward.py).
    fast = app[FAST_ROUTES] = api.fast_routes = FastRoutes(
        {"PUT": kv.put, "GET": kv.get, "DELETE": kv.delete},
        gate,
        api.http_metrics,
        auth if settings.auth_enabled else None,
        {"PUT": kv.put_soon, "GET": kv.get_soon, "DELETE": kv.delete_soon},
    )
    fast.node = node  # its read workers ask it for read fences (read_workers.py)
    membership = getattr(node, "membership", None)
    if isinstance(membership, MembershipManager):
        add_member_routes(app, membership, settings)
    if auth is not None:
        add_auth_routes(app, node, auth, api.propose)
        if settings.auth_enabled:
            app.cleanup_ctx.append(functools.partial(_auth_upkeep, auth, node, settings))
    add_backup_routes(app, node)
    return app


async def _auth_upkeep(
    auth: Authenticator, node: KVNode, settings: Settings, _app: web.Application
) -> AsyncIterator[None]:
    """The leader makes the token-signing key and the bootstrap root user (auth.maintain)."""

    def is_leader() -> bool:
        status = node.local_status()
        return status.leader_id == status.node_id

    async with running(auth.maintain(is_leader, settings.root_password), "auth-upkeep"):
        yield


class _Api:
    def __init__(self, node: KVNode, settings: Settings) -> None:
        self._node = node
        self._settings = settings
        self._timeout_s = settings.request_timeout_ms / 1000
        self._forwarder: Forwarder | None = None  # set while the app runs
        self._probe: StatusProbe | None = None  # set while the app runs
        self._peer: PeerForwarding | None = None  # forward_over_peer, while the app runs
        self.fast_routes: FastRoutes | None = None  # set by create_app
        self.http_metrics: HttpMetrics | None = None  # None: metrics off

    async def client_sessions(self, _app: web.Application) -> AsyncIterator[None]:
        source_ip = await resolve_source_ip(self._settings.http_address.host)
        ssl_context = node_client_context(self._settings)
        self._forwarder = Forwarder(
            self._node.node_id,
            source_ip=source_ip,
            connect_timeout_s=min(FORWARD_CONNECT_TIMEOUT_S, self._timeout_s / 2),
            total_timeout_s=self._timeout_s + FORWARD_GRACE_S,
            ssl_context=ssl_context,
            # Well before the leader's own keep-alive timeout (same config): the pool closes an
            # idle connection first, so the leader rarely closes one under a forward.
            idle_timeout_s=min(15.0, self._settings.http_limits.keepalive_timeout_ms / 2000),
        )
        self._probe = StatusProbe(source_ip=source_ip, ssl_context=ssl_context)
        forward_link = getattr(self._node, "forward_link", None)  # RaftKVNode's, when on
        link = forward_link() if forward_link is not None else None
        if link is not None and self.fast_routes is not None:
            self._peer = PeerForwarding(
                link, self.fast_routes, total_timeout_s=self._timeout_s + FORWARD_GRACE_S
            )
        try:
            yield
        finally:
            if self._peer is not None:
                await self._peer.close()
                self._peer = None
            await self._forwarder.close()
            await self._probe.close()
            self._forwarder = self._probe = None

    # -- /kv ------------------------------------------------------------------------------

    async def empty_key(self, request: web.Request) -> web.StreamResponse:
        raise ApiError(400, "invalid_key", "key must not be empty: name one, /kv/{key}")

    async def expect_continue(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue`: refuse an oversized PUT before the client sends its body."""
        expect = request.headers.get("Expect", "")
        if expect.lower() != "100-continue":
            return error_response(417, "expectation_failed", f"unsupported Expect: {expect}")
        if request.method == "PUT":
            try:
                key_from_request(request)
                check_content_length(request, self._settings.max_value_bytes)
            except ApiError as exc:
                return exc.response()
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # as aiohttp's own handler: no reply started yet
        return None

    # -- /cluster, /health, /ready ----------------------------------------------------------

    async def cluster_status(self, request: web.Request) -> web.StreamResponse:
        if self._probe is None:
            raise _stopping()
        body = await cluster_status(self._node, self._probe)
        space = space_json(self._node)
        if space is not None:  # the local applied state's view (kv/quota.py)
            body["alarms"] = space.pop("alarms")
            # In force: recorded in the log by the leader once usage reaches half of it.
            space["configured_quota_bytes"] = self._settings.config.storage.quota_bytes
            body["space"] = space
        return json_response(body)

    async def cluster_local(self, request: web.Request) -> web.StreamResponse:
        body = local_status_json(self._node.local_status())
        if isinstance(self._node, SpaceNode):  # its disk, for the leader's alarms (alarms.py)
            margin = self._settings.config.storage.min_free_bytes
            body.update(disk_status(self._settings.data_dir, margin))
        return json_response(body)

    async def health(self, request: web.Request) -> web.StreamResponse:
        halted = self._node.local_status().halted
        if halted is not None:
            # 200: the process is alive and a restart would halt again at the same entry, so a
            # liveness probe must not restart it (runtime/halt.py); /ready is 503.
            return json_response({"status": "halted", "halted": halted.to_json()})
        return json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.StreamResponse:
        status = self._node.local_status()
        context: dict[str, object] = {"node_id": status.node_id, "leader": status.leader_id}
        if status.halted is not None:
            exc = halted_error(status.halted)
            return json_response(
                {"status": "not_ready", "error": exc.message, "code": exc.code, **exc.context},
                status=503,
            )
        space = space_json(self._node)
        if space is not None and space["alarms"]:
            # Still 200: load balancers must keep sending the reads and deletes that fix it.
            context["alarms"] = space["alarms"]
        if self._node.is_ready():
            return json_response({"status": "ready", **context})
        return json_response(
            {"status": "not_ready", "error": "node is not ready", "code": "not_ready", **context},
            status=503,
        )

    # -- helpers ---------------------------------------------------------------------------

    async def call(self, operation: Awaitable[T], *, write: bool, timed: bool = True) -> T:
        return await call_node(operation, self._timeout_s if timed else None, write=write)

    def leader_elsewhere(self) -> NotLeaderError | None:
        """The node's `leader_elsewhere` (RaftKVNode), if it has one; None otherwise."""
        check = getattr(self._node, "leader_elsewhere", None)
        if check is None:
            return None
        elsewhere = check()
        return elsewhere if isinstance(elsewhere, NotLeaderError) else None

    async def propose(self, request: web.Request, cmd: Command) -> object:
        """Propose `cmd` (auth management); on a follower, forward the request to the leader
        (raises `Forwarded` with the leader's reply)."""
        if not isinstance(self._node, AuthNode):
            raise ApiError(501, "not_supported", "this node does not support auth")
        try:
            return await self.call(self._node.propose_command(cmd), write=True)
        except NotLeaderError as exc:
            raise Forwarded(await self.forward(request, await request.read(), exc)) from None

    async def forward(
        self, request: web.Request, body: bytes, exc: NotLeaderError
    ) -> web.StreamResponse:
        if forwarded_by(request, self._settings) is not None:
            # We were the leader when the follower asked; we are not any more. Forwarding again
            # could loop between two nodes with stale views: let the client retry instead.
            raise _not_leader(exc)
        leader_id = exc.leader_id
        leader_http = exc.leader_http
        if leader_id is not None and leader_http is None:
            leader_http = self._node.peer_http_addresses().get(leader_id)
        if leader_id is None or leader_http is None or leader_id == self._node.node_id:
            raise ApiError(
                503, "no_leader", "no leader is known; retry later", headers={"Retry-After": "1"}
            )
        via: list[bool] = []  # _send appends True once the peer link carried the request
        try:
            resp = await self._send(request, body, leader_id, leader_http, via)
        except ApiError as failed:
            if self.http_metrics is not None:
                self.http_metrics.forwarded(failed.status, over_peer=bool(via))
            raise
        if self.http_metrics is not None:
            self.http_metrics.forwarded(resp.status, over_peer=bool(via))
        return resp

    def forward_soon(
        self, request: web.Request, body: bytes, exc: NotLeaderError
    ) -> Pending | None:
        """`forward` over the peer link without a coroutine (the fast engine's hot path,
        issue 12): the leader's reply once the link brings it. None: `forward` must serve it
        (no usable link, a session's possible re-send, a request forwarded to us, an unknown
        leader: its own answers). As `forward`, at most once: a frame that may have been sent
        is never sent again (504 `outcome_unknown`); one that was not goes to `forward`."""
        peer = self._peer
        leader_id, leader_http = exc.leader_id, exc.leader_http
        if (
            peer is None
            or self._forwarder is None
            or leader_id is None
            or leader_http is None
            or leader_id == self._node.node_id
            or has_session(request)
            or not peer_forwardable(request)
            or forwarded_by(request, self._settings) is not None
            or not peer.client.usable(leader_id)
        ):
            return None
        client, metrics = peer.client, self.http_metrics
        try:
            sent = client.send_soon(request, body, leader_id)
        except NotSent:
            return None

        def finish() -> web.StreamResponse | JsonReply:
            try:
                reply = client.settled(sent)
            except NotSent:
                raise RetryWrite from None  # nothing left this node: `forward` serves it
            except MaybeSent as failed:  # TimedOut too; no session: never sent again
                if metrics is not None:
                    metrics.forwarded(504, over_peer=True)
                raise outcome_unknown(leader_id, leader_http, failed) from failed
            if metrics is not None:
                metrics.forwarded(reply.status, over_peer=True)
            return relayed(reply)

        return Pending(sent.future, finish)

    async def _send(
        self,
        request: web.Request,
        body: bytes,
        leader_id: str,
        leader_http: str,
        via: list[bool],
    ) -> web.Response:
        """Over the peer link when it can carry `request` (peer_forward.py), else over HTTP.
        At most once either way: HTTP only if the link sent nothing, or, for a session
        write, as its one re-send."""
        forwarder, peer = self._forwarder, self._peer
        if forwarder is None:
            raise _stopping()
        if peer is not None and peer_forwardable(request) and peer.client.usable(leader_id):
            try:
                resp = await peer.client.forward(request, body, leader_id)
                via.append(True)
                return resp
            except NotSent:
                pass  # nothing left this node: HTTP below, as if the link were not there
            except TimedOut as exc:  # the request's time is up: never re-sent
                via.append(True)
                raise outcome_unknown(leader_id, leader_http, exc) from exc
            except MaybeSent as exc:
                via.append(True)
                if not has_session(request):
                    raise outcome_unknown(leader_id, leader_http, exc) from exc
                log.info("re-sending a session write", leader=leader_id, error=str(exc))
                return await forwarder.forward(request, body, leader_id, leader_http, resend=True)
        return await forwarder.forward(request, body, leader_id, leader_http)


async def call_node(operation: Awaitable[T], timeout_s: float | None, *, write: bool) -> T:
    """Await a node call under the request timeout (None: the call bounds itself), its
    failures mapped to API errors (rules)."""
    try:
        if timeout_s is None:
            return await operation
        return await run_within(operation, timeout_s)  # as asyncio.timeout, but cheaper
    except (NoLeaderError, OperationTimeout, TimeoutError, NodeStopping, FeatureNotEnabled) as exc:
        mapped = node_failure(exc, write=write)
        assert mapped is not None
        raise mapped from exc


def _key_not_found(key: str) -> ApiError:
    return ApiError(404, "key_not_found", "key not found", key=key)


def _not_leader(exc: NotLeaderError) -> ApiError:
    return ApiError(
        503,
        "not_leader",
        "this node is not the leader; retry",
        headers={"Retry-After": "1"},
        leader=exc.leader_id,
        leader_http=exc.leader_http,
    )


def _stopping() -> ApiError:
    return stopping_error()
