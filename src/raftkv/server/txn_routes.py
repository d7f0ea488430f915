"""POST /txn, POST /compact and POST /session.

Routes:
    POST /txn      {"compare": [{"key", "target", "op", "value"}], "success": [ops],
                   "failure": [ops]}; ops {"op": "get"|"put"|"delete", "key", "value"?,
                   "prefix"?, "value_encoding"?} -> {"succeeded", "revision", "results"}
    POST /compact  {"revision": N} -> {"compact_revision": N}
    POST /session  {"ttl_s": n}? -> 201 {"session_id", "ttl_s"}

Rules:
- A transaction is validated completely before it is proposed: at most MAX_TXN_OPS compares +
  ops, keys within MAX_KEY_BYTES, values within `max_value_bytes`, all keys and values together
  within MAX_TXN_BYTES; every violation is a 400 naming it. A false compare is not an error
  (200, `"succeeded": false`).
- `prefix`: `true` makes the op's `key` a prefix (get/delete only); a string gives the prefix
  itself (then `key` may be omitted). A delete with an empty prefix is refused.
- Compare `value` is an integer >= 0 for version/mod_revision/create_revision, a string for
  value (base64 bytes with `"value_encoding": "base64"`).
- Results, one per op of the branch that ran: get -> {"op": "get", "items": [...], "count"},
  put -> {"op": "put", "revision"}, delete -> {"op": "delete", "deleted"}.
- `/compact` below or at the compact revision is a 410 `compacted`; above the store's revision
  a 400 `future_revision`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final, Literal

import msgspec
from aiohttp import web

from raftkv.kv.commands import (
    Compact,
    CompactResult,
    Compare,
    CompareOp,
    DeleteOp,
    DeleteRangeResult,
    GetOp,
    OpenSession,
    OpResult,
    PutOp,
    PutResult,
    RangeResult,
    SessionResult,
    Target,
    Txn,
    TxnOp,
    TxnResult,
    Value,
)
from raftkv.runtime.api import KVNode
from raftkv.server.config import Settings
from raftkv.server.errors import ApiError, json_response
from raftkv.server.inputs import MAX_KEY_BYTES, read_body
from raftkv.server.kv_params import kv_json
from raftkv.server.kv_routes import NodeCalls, submit

MAX_TXN_OPS: Final = 128
MAX_TXN_BYTES: Final = 4 << 20
DEFAULT_SESSION_TTL_S: Final = 60
MAX_SESSION_TTL_S: Final = 3600
_BODY_LIMIT_FACTOR: Final = 8  # a JSON body may escape and base64 its contents

_TARGETS: Final = {
    "value": Target.VALUE,
    "version": Target.VERSION,
    "mod_revision": Target.MOD_REVISION,
    "create_revision": Target.CREATE_REVISION,
}
_OPS: Final = {"==": CompareOp.EQ, "!=": CompareOp.NE, "<": CompareOp.LT, ">": CompareOp.GT}


class _CompareIn(msgspec.Struct, forbid_unknown_fields=True):
    key: str
    target: Literal["value", "version", "mod_revision", "create_revision"]
    op: Literal["==", "!=", "<", ">"]
    value: str | int
    value_encoding: Literal["base64"] | None = None


class _OpIn(msgspec.Struct, forbid_unknown_fields=True):
    op: Literal["get", "put", "delete"]
    key: str = ""
    value: str | None = None
    prefix: bool | str = False
    value_encoding: Literal["base64"] | None = None


class _TxnIn(msgspec.Struct, forbid_unknown_fields=True):
    compare: list[_CompareIn] = []
    success: list[_OpIn] = []
    failure: list[_OpIn] = []


class _CompactIn(msgspec.Struct, forbid_unknown_fields=True):
    revision: int


class _SessionIn(msgspec.Struct, forbid_unknown_fields=True):
    ttl_s: int = DEFAULT_SESSION_TTL_S


def _decode(body: bytes, typ: type[Any], what: str) -> Any:
    try:
        return msgspec.json.decode(body or b"{}", type=typ)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_body", f"{what}: {exc}") from exc
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"malformed JSON body: {exc}") from exc


class _Budget:
    def __init__(self, max_value: int) -> None:
        self.max_value = max_value
        self.total = 0

    def key(self, key: str, where: str, *, empty_ok: bool = False) -> str:
        size = len(key.encode("utf-8", "surrogatepass"))
        if not key and not empty_ok:
            raise ApiError(400, "invalid_key", f"{where}: key must not be empty")
        if size > MAX_KEY_BYTES:
            raise ApiError(400, "key_too_large", f"{where}: key longer than {MAX_KEY_BYTES} bytes")
        self._add(size)
        return key

    def value(self, raw: str, encoding: str | None, where: str) -> Value:
        value: Value = raw
        if encoding == "base64":
            try:
                value = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ApiError(400, "invalid_value", f"{where}: bad base64: {exc}") from exc
        size = len(value) if isinstance(value, bytes) else len(value.encode("utf-8", "replace"))
        if size > self.max_value:
            raise ApiError(
                413,
                "value_too_large",
                f"{where}: value longer than {self.max_value} bytes",
                max_bytes=self.max_value,
            )
        self._add(size)
        return value

    def _add(self, size: int) -> None:
        self.total += size
        if self.total > MAX_TXN_BYTES:
            raise ApiError(
                400,
                "txn_too_large",
                f"transaction keys and values exceed {MAX_TXN_BYTES} bytes",
                max_bytes=MAX_TXN_BYTES,
            )


def _compare(c: _CompareIn, b: _Budget, where: str) -> Compare:
    key = b.key(c.key, where)
    target = _TARGETS[c.target]
    if target is Target.VALUE:
        if not isinstance(c.value, str):
            raise ApiError(400, "invalid_compare", f"{where}: a value compare needs a string")
        return Compare(key, target, _OPS[c.op], b.value(c.value, c.value_encoding, where))
    if isinstance(c.value, bool) or not isinstance(c.value, int) or c.value < 0:
        raise ApiError(400, "invalid_compare", f"{where}: {c.target} needs an integer >= 0")
    return Compare(key, target, _OPS[c.op], c.value)


def _op(o: _OpIn, b: _Budget, where: str) -> TxnOp:
    is_prefix = o.prefix is True or isinstance(o.prefix, str)
    key = o.prefix if isinstance(o.prefix, str) else o.key
    if isinstance(o.prefix, str) and o.key:
        raise ApiError(400, "invalid_op", f"{where}: give the prefix as key or prefix, not both")
    match o.op:
        case "put":
            if is_prefix:
                raise ApiError(400, "invalid_op", f"{where}: put takes no prefix")
            if o.value is None:
                raise ApiError(400, "invalid_op", f"{where}: put needs a value")
            return PutOp(b.key(key, where), b.value(o.value, o.value_encoding, where))
        case "get":
            return GetOp(b.key(key, where, empty_ok=is_prefix), is_prefix)
        case _:
            if is_prefix and not key:
                raise ApiError(400, "invalid_prefix", f"{where}: refusing an empty prefix")
            return DeleteOp(b.key(key, where), is_prefix)


def parse_txn(body: bytes, max_value: int) -> Txn:
    txn_in: _TxnIn = _decode(body, _TxnIn, "transaction")
    n_ops = len(txn_in.compare) + len(txn_in.success) + len(txn_in.failure)
    if n_ops > MAX_TXN_OPS:
        raise ApiError(
            400,
            "too_many_ops",
            f"a transaction holds at most {MAX_TXN_OPS} compares and ops",
            max_ops=MAX_TXN_OPS,
            ops=n_ops,
        )
    b = _Budget(max_value)
    return Txn(
        [_compare(c, b, f"compare[{i}]") for i, c in enumerate(txn_in.compare)],
        [_op(o, b, f"success[{i}]") for i, o in enumerate(txn_in.success)],
        [_op(o, b, f"failure[{i}]") for i, o in enumerate(txn_in.failure)],
    )


def _result_json(r: OpResult) -> dict[str, object]:
    match r:
        case RangeResult(kvs=kvs):
            return {"op": "get", "items": [kv_json(kv) for kv in kvs], "count": len(kvs)}
        case PutResult(revision=rev):
            return {"op": "put", "revision": rev}
        case DeleteRangeResult(deleted=n):
            return {"op": "delete", "deleted": n}
    raise ApiError(500, "internal_error", "unexpected op result")


class TxnRoutes:
    def __init__(self, node: KVNode, settings: Settings, calls: NodeCalls) -> None:
        self._node = node
        self._settings = settings
        self._calls = calls

    async def _body(self, request: web.Request) -> bytes:
        return await read_body(request, _BODY_LIMIT_FACTOR * self._settings.max_value_bytes)

    async def txn(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        txn = parse_txn(body, self._settings.max_value_bytes)
        result = await submit(self._node, self._calls, request, body, txn)
        if isinstance(result, web.StreamResponse):
            return result
        if not isinstance(result, TxnResult):
            raise ApiError(500, "internal_error", "unexpected result")
        return json_response(
            {
                "succeeded": result.succeeded,
                "revision": result.revision,
                "results": [_result_json(r) for r in result.results],
            }
        )

    async def compact(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        want: _CompactIn = _decode(body, _CompactIn, "compact")
        if want.revision < 1:
            raise ApiError(400, "invalid_revision", "revision must be >= 1")
        result = await submit(self._node, self._calls, request, body, Compact(want.revision))
        if isinstance(result, web.StreamResponse):
            return result
        if not isinstance(result, CompactResult):
            raise ApiError(500, "internal_error", "unexpected result")
        if result.ok:
            return json_response({"compact_revision": result.compact_revision})
        if want.revision <= result.compact_revision:
            raise ApiError(
                410,
                "compacted",
                "that revision is already compacted",
                revision=want.revision,
                compact_revision=result.compact_revision,
            )
        raise ApiError(
            400,
            "future_revision",
            "cannot compact beyond the store's revision",
            revision=want.revision,
            current_revision=result.revision,
        )

    async def open_session(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        want: _SessionIn = _decode(body, _SessionIn, "session")
        if not 1 <= want.ttl_s <= MAX_SESSION_TTL_S:
            raise ApiError(400, "invalid_ttl", f"ttl_s must be between 1 and {MAX_SESSION_TTL_S}")
        cmd = OpenSession(want.ttl_s * 1000, 0)
        result = await submit(self._node, self._calls, request, body, cmd)
        if isinstance(result, web.StreamResponse):
            return result
        if not isinstance(result, SessionResult):
            raise ApiError(500, "internal_error", "unexpected result")
        return json_response(
            {"session_id": result.session_id, "ttl_s": result.ttl_ms // 1000}, status=201
        )
