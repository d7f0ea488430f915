"""Transactions on the wire: the POST /txn body from a `TxnRequest`, its reply to a
`TxnResult`, and the same JSON read back (`parse_txn`: what `raftkv txn` takes).

Rules: bytes (a put's value, a compare's value) travel as base64 with
`"value_encoding": "base64"`, as the API specifies; text as is. A compare on `value` needs text
or bytes; on version / mod_revision / create_revision an int. Op results are tagged by `op`:
get -> {items, count}, put -> {revision}, delete -> {deleted}.
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

import msgspec

from raftkv.client.types import (
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    DeleteOpResult,
    Get,
    GetOpResult,
    OpResult,
    Put,
    PutOpResult,
    TxnOp,
    TxnRequest,
    TxnResult,
    Value,
)
from raftkv.client.wire import KeyValueWire, Reply, decoder, key_value

# -- the reply -----------------------------------------------------------------------------------


class _GetOpWire(msgspec.Struct, tag_field="op", tag="get"):
    items: list[KeyValueWire]
    count: int


class _PutOpWire(msgspec.Struct, tag_field="op", tag="put"):
    revision: int


class _DeleteOpWire(msgspec.Struct, tag_field="op", tag="delete"):
    deleted: int


class _TxnWire(msgspec.Struct):
    succeeded: bool
    revision: int
    results: list[_GetOpWire | _PutOpWire | _DeleteOpWire]


_decode_txn_wire = decoder(_TxnWire, "txn")


def _op_result(wire: _GetOpWire | _PutOpWire | _DeleteOpWire) -> OpResult:
    match wire:
        case _GetOpWire(items=items, count=count):
            return GetOpResult([key_value(i) for i in items], count)
        case _PutOpWire(revision=revision):
            return PutOpResult(revision)
        case _DeleteOpWire(deleted=deleted):
            return DeleteOpResult(deleted)


def decode_txn(reply: Reply) -> TxnResult:
    wire = _decode_txn_wire(reply)
    return TxnResult(wire.succeeded, wire.revision, [_op_result(r) for r in wire.results])


# -- the request ---------------------------------------------------------------------------------


def _put_value(value: Value, doc: dict[str, object]) -> None:
    if isinstance(value, bytes | bytearray | memoryview):
        doc["value"] = base64.b64encode(bytes(value)).decode("ascii")
        doc["value_encoding"] = "base64"
    elif isinstance(value, str):
        doc["value"] = value
    else:
        raise TypeError(f"value must be str or bytes, not {type(value).__name__}")


def _compare_doc(c: Compare) -> dict[str, object]:
    doc: dict[str, object] = {"key": c.key, "target": c.target, "op": c.op}
    if c.target == "value":
        if isinstance(c.value, int):
            raise TypeError(f"a compare on the value of {c.key!r} needs str or bytes")
        _put_value(c.value, doc)
    else:
        if isinstance(c.value, bool) or not isinstance(c.value, int):
            raise TypeError(f"a compare on {c.target} of {c.key!r} needs an int")
        doc["value"] = c.value
    return doc


def _op_doc(op: TxnOp) -> dict[str, object]:
    match op:
        case Put(key=key, value=value):
            doc: dict[str, object] = {"op": "put", "key": key}
            _put_value(value, doc)
        case Get(key=key, prefix=prefix) | Delete(key=key, prefix=prefix):
            doc = {"op": "get" if isinstance(op, Get) else "delete", "key": key}
            if prefix:
                doc["prefix"] = True
    return doc


def txn_body(request: TxnRequest) -> bytes:
    return msgspec.json.encode(
        {
            "compare": [_compare_doc(c) for c in request.compare],
            "success": [_op_doc(o) for o in request.success],
            "failure": [_op_doc(o) for o in request.failure],
        }
    )


# -- the request, read back (raftkv txn) ---------------------------------------------------------


class _CompareIn(msgspec.Struct, forbid_unknown_fields=True):
    key: str
    target: CompareTarget
    op: CompareOp
    value: int | str
    value_encoding: Literal["base64"] | None = None


class _OpIn(msgspec.Struct, forbid_unknown_fields=True):
    op: Literal["get", "put", "delete"]
    key: str
    value: str | None = None
    prefix: bool = False
    value_encoding: Literal["base64"] | None = None


class _TxnIn(msgspec.Struct, forbid_unknown_fields=True):
    compare: list[_CompareIn] = msgspec.field(default_factory=list)
    success: list[_OpIn] = msgspec.field(default_factory=list)
    failure: list[_OpIn] = msgspec.field(default_factory=list)


def _in_value(raw: str, encoding: str | None) -> Value:
    return base64.b64decode(raw, validate=True) if encoding == "base64" else raw


def _in_op(o: _OpIn, where: str) -> TxnOp:
    if o.op == "put":
        if o.value is None or o.prefix:
            raise ValueError(f"{where}: put needs a value and takes no prefix")
        return Put(o.key, _in_value(o.value, o.value_encoding))
    if o.value is not None:
        raise ValueError(f"{where}: {o.op} takes no value")
    return Get(o.key, o.prefix) if o.op == "get" else Delete(o.key, o.prefix)


def parse_txn(raw: bytes) -> TxnRequest:
    """A transaction in the JSON form POST /txn takes. Raises ValueError saying what is wrong."""
    try:
        doc = msgspec.json.decode(raw, type=_TxnIn)
        compare = [
            Compare(
                c.key,
                c.target,
                c.op,
                _in_value(c.value, c.value_encoding) if isinstance(c.value, str) else c.value,
            )
            for c in doc.compare
        ]
        success = [_in_op(o, f"success[{i}]") for i, o in enumerate(doc.success)]
        failure = [_in_op(o, f"failure[{i}]") for i, o in enumerate(doc.failure)]
    except (msgspec.DecodeError, msgspec.ValidationError, binascii.Error) as exc:
        raise ValueError(str(exc)) from exc
    return TxnRequest(compare, success, failure)
