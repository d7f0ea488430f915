"""The /kv routes: single keys (revisions, CAS, binary values) and ranges.

Routes:
    PUT    /kv/{key}   JSON {"value": s}, a UTF-8 body, or application/octet-stream bytes
                       -> {"key", "value", "message", "revision"}; If-Match / If-None-Match
    GET    /kv/{key}   ?consistency=linearizable|lease|stale &revision= &min_revision=
                       -> {"key", "value", "create_revision", "mod_revision", "version"}, ETag
    DELETE /kv/{key}   -> {"key", "message", "revision"}; If-Match
    GET    /kv         ?prefix= | start= [&end=], limit, after, keys_only, count_only, revision,
                       consistency, min_revision -> {"items", "count", "next_after", "revision"}
    DELETE /kv?prefix=P  -> {"deleted", "revision"} (one revision, atomic)

Rules:
- Seed replies are unchanged apart from added fields; errors are JSON (`errors.py`).
- A conditional write is a one-compare transaction whose failure branch reads the key, so a
  412 can name the key's current mod_revision (0 if absent) from the same atomic step.
- Writes carry the session headers (`kv_params.session_headers`) into a `SessionRequest`; a
  session error is a 409 with its code; a write refused by a `no_space` alarm is a 507
  (`alarms.no_space_error`). Writes on a follower are forwarded by the caller's
  `forward` (headers that change a write's meaning go along: see `forward.py`).
- `put`, `get` and `delete` are also served by the fast engine (`fast_routes.py`), which passes
  a `fast_http.FastRequest`: they (and what they call) use only what it has — method, headers,
  query, rel_url, path, content_type/content_length, read(), transport, remote, item access.
  `test_server_engines.py` holds both engines to the same bytes.
- A range page and its `count` come from one read transaction: paging with a fixed `revision`
  is a consistent snapshot. `count` is the number of keys in the whole range at that
  revision (ignoring `after` and `limit`); `next_after` is null on the page that ends it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, TypeVar

import msgspec
from aiohttp import web

from raftkv.kv.commands import (
    Command,
    Delete,
    DeleteOp,
    DeleteRange,
    DeleteRangeResult,
    DeleteResult,
    GetOp,
    KeyValue,
    Put,
    PutOp,
    PutResult,
    RangeResult,
    Result,
    SessionError,
    SessionRequest,
    Txn,
    TxnResult,
    Value,
)
from raftkv.kv.mvcc import MVCCStore
from raftkv.kv.quota import NoSpace
from raftkv.runtime.api import KVNode, MustWait, NotLeaderError, RetryWrite, SoonNode
from raftkv.server.alarms import no_space_error
from raftkv.server.config import Settings
from raftkv.server.errors import ApiError, json_response, node_failure
from raftkv.server.fast_request import JsonReply, Pending
from raftkv.server.inputs import (
    MAX_KEY_BYTES,
    checked_body,
    key_from_request,
    read_body,
    value_from_body,
)
from raftkv.server.kv_params import (
    OCTET_STREAM,
    check_revision,
    consistency,
    etag,
    kv_json,
    precondition_failed,
    preconditions,
    query_bool,
    query_int,
    session_headers,
    value_json,
    wants_raw,
)

T = TypeVar("T")

STORED_MESSAGE: Final = "Key-value pair stored successfully"
DELETED_MESSAGE: Final = "Key deleted successfully"
DEFAULT_LIMIT: Final = 1000
MAX_LIMIT: Final = 10_000


class NodeCalls(Protocol):
    """What the routes borrow from the server (`http._Api`): timeouts and forwarding."""

    async def call(self, operation: Awaitable[T], *, write: bool, timed: bool = True) -> T: ...

    async def forward(
        self, request: web.Request, body: bytes, exc: NotLeaderError
    ) -> web.StreamResponse: ...

    def leader_elsewhere(self) -> NotLeaderError | None: ...

    def forward_soon(
        self, request: web.Request, body: bytes, exc: NotLeaderError
    ) -> Pending | None: ...


async def submit(
    node: KVNode, calls: NodeCalls, request: web.Request, body: bytes, cmd: Command
) -> Result | web.StreamResponse:
    """Propose `cmd` (inside a session request if the headers name one); a follower forwards."""
    session = session_headers(request)
    if session is not None:
        if not isinstance(cmd, Put | Delete | DeleteRange | Txn):
            raise ApiError(400, "invalid_session", "this request cannot use a session")
        sid, seq, ack = session
        cmd = SessionRequest(sid, seq, ack, 0, cmd)
    # A follower that knows the leader forwards at once: what `write` would answer anyway,
    # without its propose attempt (an admission slot, the core's refusal).
    elsewhere = calls.leader_elsewhere()
    if elsewhere is not None:
        return await calls.forward(request, body, elsewhere)
    try:
        result = await calls.call(node.write(cmd), write=True)
    except NotLeaderError as exc:
        return await calls.forward(request, body, exc)
    return checked(result)


def checked(result: Result) -> Result:
    """A write's result, or the error it stands for (no space, a session's refusal)."""
    if isinstance(result, NoSpace):
        raise no_space_error(result)  # nothing was changed (kv/quota.py)
    if isinstance(result, SessionError):
        words = {
            "session_expired": "the session expired or does not exist; open a new one",
            "stale_request": "this sequence number was already forgotten (acknowledged or "
            "too old); its outcome cannot be reported",
        }.get(result.code, result.code)
        raise ApiError(409, result.code, words, session_id=result.session_id, seq=result.seq)
    return result


# A bare /kv (GET or DELETE) names neither a key nor a range: say what would.
BARE_KV: Final = (
    "key must not be empty: name a key, /kv/{key}, or a range, /kv?prefix=P or /kv?start=A&end=B"
)


def _range_params(request: web.Request) -> tuple[str, str | None, str]:
    """(start, end, prefix) of a range request; a bare /kv is refused as before."""
    q = request.query
    prefix, start, end = q.get("prefix"), q.get("start"), q.get("end")
    if prefix is None and start is None:
        if end is not None:
            raise ApiError(400, "invalid_range", "end needs start")
        raise ApiError(400, "invalid_key", BARE_KV)
    if prefix is not None and (start is not None or end is not None):
        raise ApiError(400, "invalid_range", "use either prefix or start/end, not both")
    for name in ("prefix", "start", "end", "after"):
        raw = q.get(name)
        if raw is not None and len(raw.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
            raise ApiError(400, "invalid_range", f"{name} longer than {MAX_KEY_BYTES} bytes")
    if prefix is not None:
        return prefix, None, prefix
    assert start is not None
    return start, end, ""


class KvRoutes:
    def __init__(self, node: KVNode, settings: Settings, calls: NodeCalls) -> None:
        self._node = node
        self._settings = settings
        self._calls = calls
        # The node's calls without a coroutine, when it has them (the fast engine's hot path).
        self._soon = node if isinstance(node, SoonNode) else None

    def _value(self, request: web.Request, body: bytes) -> Value:
        # aiohttp reports a missing Content-Type as application/octet-stream: only an explicit
        # one makes the body binary (a seed client sending no type still stores text).
        if "Content-Type" in request.headers and request.content_type == OCTET_STREAM:
            return body  # bounded by read_body
        return value_from_body(request, body, self._settings.max_value_bytes)

    # -- single keys ------------------------------------------------------------------------

    def _put_command(self, request: web.Request, key: str, body: bytes) -> tuple[Value, Command]:
        value = self._value(request, body)
        conds = preconditions(request, key)
        cmd: Command = Put(key, value)
        if conds:
            cmd = Txn(conds, [PutOp(key, value)], [GetOp(key)])
        return value, cmd

    async def put(self, request: web.Request) -> web.StreamResponse:
        key = key_from_request(request)
        body = await read_body(request, self._settings.max_value_bytes)
        value, cmd = self._put_command(request, key, body)
        result = await submit(self._node, self._calls, request, body, cmd)
        if isinstance(result, web.StreamResponse):
            return result
        return _aiohttp(_put_reply(key, value, result))

    def _get_plan(
        self, request: web.Request
    ) -> tuple[str, str, int, Callable[[MVCCStore], KeyValue | None]]:
        """(key, consistency, min_revision, the read) of a GET, its parameters checked."""
        key = key_from_request(request)
        level = consistency(request)
        rev = query_int(request, "revision", minimum=1)
        min_rev = query_int(request, "min_revision") or 0

        def read(store: MVCCStore) -> KeyValue | None:
            at = check_revision(store, rev)
            return store.get(key) if rev is None else store.get_at(key, at)

        return key, level, min_rev, read

    async def get(self, request: web.Request) -> web.StreamResponse:
        key, level, min_rev, read = self._get_plan(request)
        op = self._node.read(
            read, linearizable=level != "stale", min_revision=min_rev, lease=level == "lease"
        )
        try:
            # The node bounds a read's waits by the request timeout itself (api.KVNode.read):
            # no second timer per read here (asyncio.timeout costs ~40 µs under uvloop).
            kv = await self._calls.call(op, write=False, timed=False)
        except NotLeaderError as exc:  # not expected from the runtime: ReadIndex goes via leader
            raise _not_leader(exc) from exc
        return _aiohttp(_get_reply(request, key, kv))

    def _delete_command(self, request: web.Request, key: str) -> Command:
        conds = preconditions(request, key)
        cmd: Command = Delete(key)
        if conds:
            cmd = Txn(conds, [DeleteOp(key)], [GetOp(key)])
        return cmd

    async def delete(self, request: web.Request) -> web.StreamResponse:
        key = key_from_request(request)
        cmd = self._delete_command(request, key)
        result = await submit(self._node, self._calls, request, b"", cmd)
        if isinstance(result, web.StreamResponse):
            return result
        return _aiohttp(_delete_reply(key, result))

    # -- the same without a coroutine (the fast engine: fast_routes.FastRoutes.handle_soon) --
    # Each returns the reply now, a `Pending` reply (a node future, then the same code as the
    # coroutine after its await), or None: the coroutine must serve it (module rules).

    def put_soon(
        self, request: web.Request, body: bytes
    ) -> web.StreamResponse | JsonReply | Pending | None:
        if self._soon is None:
            return None
        key = key_from_request(request)
        body = checked_body(request, body, self._settings.max_value_bytes)
        value, cmd = self._put_command(request, key, body)
        fut = self._write_soon(request, cmd, body)
        if not isinstance(fut, asyncio.Future):
            return fut  # forwarded (a Pending reply), or None
        soon = self._soon
        return Pending(fut, lambda: _put_reply(key, value, _settled_write(soon, fut), True))

    def get_soon(
        self, request: web.Request, _body: bytes
    ) -> web.StreamResponse | JsonReply | Pending | None:
        soon = self._soon
        if soon is None:
            return None
        key, level, min_rev, read = self._get_plan(request)
        try:
            fut = soon.read_soon(
                linearizable=level != "stale", min_revision=min_rev, lease=level == "lease"
            )
        except MustWait:
            return None
        except Exception as exc:
            raise _failure(exc, write=False) from exc
        if fut is None:
            return _get_reply(request, key, soon.read_applied(read), True)

        def finish() -> web.StreamResponse | JsonReply:
            try:
                soon.read_settled(fut)
            except Exception as exc:
                raise _failure(exc, write=False) from exc
            return _get_reply(request, key, soon.read_applied(read), True)

        return Pending(fut, finish)

    def delete_soon(
        self, request: web.Request, _body: bytes
    ) -> web.StreamResponse | JsonReply | Pending | None:
        soon = self._soon
        if soon is None:
            return None
        key = key_from_request(request)
        fut = self._write_soon(request, self._delete_command(request, key), b"")
        if not isinstance(fut, asyncio.Future):
            return fut  # forwarded (a Pending reply), or None
        return Pending(fut, lambda: _delete_reply(key, _settled_write(soon, fut), True))

    def _write_soon(
        self, request: web.Request, cmd: Command, body: bytes
    ) -> asyncio.Future[object] | Pending | None:
        """`submit` without a coroutine: the proposal's future, or on a follower the forwarded
        reply (`NodeCalls.forward_soon`); None: `submit` must serve it (sessions, ...)."""
        assert self._soon is not None
        if session_headers(request) is not None:
            return None
        elsewhere = self._calls.leader_elsewhere()
        if elsewhere is not None:  # as `submit`: a follower that knows the leader forwards
            return self._calls.forward_soon(request, body, elsewhere)
        try:
            return self._soon.write_soon(cmd)
        except MustWait:
            return None
        except Exception as exc:
            raise _failure(exc, write=True) from exc

    # -- ranges -----------------------------------------------------------------------------

    async def range_get(self, request: web.Request) -> web.StreamResponse:
        start, end, prefix = _range_params(request)
        level = consistency(request)
        rev = query_int(request, "revision", minimum=1)
        min_rev = query_int(request, "min_revision") or 0
        limit = query_int(request, "limit", minimum=1)
        if limit is None:
            limit = DEFAULT_LIMIT
        elif limit > MAX_LIMIT:
            raise ApiError(400, "invalid_limit", f"limit must be <= {MAX_LIMIT}", limit=limit)
        after = request.query.get("after")
        keys_only = query_bool(request, "keys_only")
        count_only = query_bool(request, "count_only")

        def read(store: MVCCStore) -> tuple[int, list[KeyValue], str | None, int]:
            at = check_revision(store, rev)
            count = 0
            items: list[KeyValue] = []
            next_after: str | None = None
            for kv in store.range(start, end, prefix, None if rev is None else at, None):
                count += 1
                if count_only or (after is not None and kv.key <= after):
                    continue
                if len(items) < limit:
                    items.append(kv)
                elif next_after is None:
                    next_after = items[-1].key
            return count, items, next_after, at

        count, items, next_after, at = await self._calls.call(
            self._node.read(
                read, linearizable=level != "stale", min_revision=min_rev, lease=level == "lease"
            ),
            write=False,
        )
        return json_response(
            {
                "items": [kv_json(kv, keys_only=keys_only) for kv in items],
                "count": count,
                "next_after": next_after,
                "revision": at,
            }
        )

    async def range_delete(self, request: web.Request) -> web.StreamResponse:
        prefix = request.query.get("prefix")
        if prefix is None:
            raise ApiError(400, "invalid_key", BARE_KV)
        if prefix == "":
            raise ApiError(400, "invalid_prefix", "refusing to delete with an empty prefix")
        result = await submit(self._node, self._calls, request, b"", DeleteRange(prefix))
        if isinstance(result, web.StreamResponse):
            return result
        if not isinstance(result, DeleteRangeResult):
            raise ApiError(500, "internal_error", "unexpected result")
        return json_response({"deleted": result.deleted, "revision": result.revision})


def _json(body: dict[str, object], tag: str | None, fast: bool) -> web.StreamResponse | JsonReply:
    """`json_response(body)` (with an ETag when given), or its fast engine form (the same
    bytes: fast_request.JsonReply)."""
    if fast:
        return JsonReply(msgspec.json.encode(body), tag)
    return json_response(body, headers=None if tag is None else {"ETag": tag})


def _aiohttp(reply: web.StreamResponse | JsonReply) -> web.StreamResponse:
    assert isinstance(reply, web.StreamResponse)  # made with fast=False
    return reply


def _put_reply(
    key: str, value: Value, result: Result, fast: bool = False
) -> web.StreamResponse | JsonReply:
    revision = _write_revision(key, result)
    reply: dict[str, object] = {"key": key}
    value_json(value, reply)
    reply["message"] = STORED_MESSAGE
    reply["revision"] = revision
    return _json(reply, etag(revision), fast)


def _get_reply(
    request: web.Request, key: str, kv: KeyValue | None, fast: bool = False
) -> web.StreamResponse | JsonReply:
    if kv is None:
        raise ApiError(404, "key_not_found", "key not found", key=key)
    if wants_raw(request):
        raw = kv.value.encode() if isinstance(kv.value, str) else kv.value
        headers = {"ETag": etag(kv.mod_revision)}
        return web.Response(body=raw, content_type=OCTET_STREAM, headers=headers)
    return _json(kv_json(kv), etag(kv.mod_revision), fast)


def _delete_reply(key: str, result: Result, fast: bool = False) -> web.StreamResponse | JsonReply:
    revision = _write_revision(key, result)
    deleted = (
        result.existed
        if isinstance(result, DeleteResult)
        else isinstance(result, TxnResult)
        and isinstance(result.results[0], DeleteRangeResult)
        and result.results[0].deleted > 0
    )
    if not deleted:
        raise ApiError(404, "key_not_found", "key not found", key=key)
    return _json({"key": key, "message": DELETED_MESSAGE, "revision": revision}, None, fast)


def _settled_write(soon: SoonNode, fut: asyncio.Future[object]) -> Result:
    """A `write_soon` future's result as `submit` returns it (RetryWrite passes through)."""
    try:
        result = soon.write_settled(fut)
    except RetryWrite:
        raise
    except Exception as exc:
        raise _failure(exc, write=True) from exc
    return checked(result)


def _failure(exc: Exception, *, write: bool) -> Exception:
    """What a node call's exception becomes (as `call_node` and `get` map it)."""
    if isinstance(exc, NotLeaderError) and not write:
        return _not_leader(exc)
    mapped = node_failure(exc, write=write)
    return exc if mapped is None else mapped


def _write_revision(key: str, result: Result) -> int:
    """The revision of a single-key write's result; a failed precondition raises 412."""
    match result:
        case PutResult(revision=rev) | DeleteResult(revision=rev):
            return rev
        case TxnResult(succeeded=True, revision=rev):
            return rev
        case TxnResult(succeeded=False, results=[RangeResult(kvs=kvs), *_]):
            raise precondition_failed(key, kvs[0] if kvs else None)
    raise ApiError(500, "internal_error", "unexpected result")


def _not_leader(exc: NotLeaderError) -> ApiError:
    return ApiError(
        503,
        "not_leader",
        "this node is not the leader; retry",
        headers={"Retry-After": "1"},
        leader=exc.leader_id,
        leader_http=exc.leader_http,
    )
