"""Sans-I/O encoding of raftkv's HTTP API: operations -> `Call`s, replies -> typed results.

Rules:
- Nothing here does I/O, reads a clock or keeps state: a `Call` says what to send (method,
  target, headers, body), what kind of operation it is (which decides whether the engine may
  ever send it twice) and how to decode a 2xx reply. Error replies are decoded by
  `error_from_reply`, never by a call's decoder.
- The encoding follows the API exactly as README/issue 11 word it: keys are percent-encoded
  whole (`/` and `:` included), text values go as JSON `{"value": s}`, bytes as a raw
  `application/octet-stream` body; `If-Match: "<rev>"` and `If-None-Match: *` for CAS.
- Replies are decoded with msgspec into wire Structs and converted to the public types; a reply
  that does not decode is a `ServerError` naming the call, never a crash with a raw traceback.
"""

from __future__ import annotations

import enum
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import msgspec

from raftkv.client.errors import RaftkvError, error_class
from raftkv.client.txn_codec import decode_txn, txn_body
from raftkv.client.types import (
    ClusterStatus,
    DeleteRangeResult,
    DeleteResult,
    KeyValue,
    PutResult,
    RangeResult,
    SessionInfo,
    TxnRequest,
    TxnResult,
    Value,
)
from raftkv.client.wire import KeyValueWire, Reply, decoder, key_value

T = TypeVar("T")

JSON: Final = "application/json"
OCTET_STREAM: Final = "application/octet-stream"
CONSISTENCY_LEVELS: Final = ("linearizable", "lease", "stale")
SESSION_HEADER: Final = "Raftkv-Session"
SEQ_HEADER: Final = "Raftkv-Seq"
ACK_HEADER: Final = "Raftkv-Ack"


class Kind(enum.Enum):
    """How the engine may treat a call whose reply never arrived."""

    READ = "read"  # no effect: send again freely
    WRITE = "write"  # applying twice is wrong: re-sent only under a session (same seq)
    IDEMPOTENT = "idempotent"  # has an effect, but a second copy is harmless (open a session)


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One logical request. The engine adds auth and session headers and picks the node."""

    method: str
    target: str  # path and query, already percent-encoded
    kind: Kind
    decode: Callable[[Reply], T] = field(repr=False)
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    name: str = ""  # for messages: "put", "get" ...


# -- wire shapes of the replies ----------------------------------------------------------------


class _RangeWire(msgspec.Struct):
    items: list[KeyValueWire]
    count: int
    next_after: str | None = None
    revision: int = 0


class _CompactWire(msgspec.Struct):
    compact_revision: int


class _TokenWire(msgspec.Struct):
    token: str


_decode_kv_wire = decoder(KeyValueWire, "get")
_decode_range_wire = decoder(_RangeWire, "range")
_decode_put = decoder(PutResult, "put")
_decode_delete = decoder(DeleteResult, "delete")
_decode_delete_range = decoder(DeleteRangeResult, "delete range")
_decode_compact = decoder(_CompactWire, "compact")
_decode_status = decoder(ClusterStatus, "cluster status")
_decode_session = decoder(SessionInfo, "session")
_decode_token = decoder(_TokenWire, "auth token")


def _decode_get(reply: Reply) -> KeyValue:
    return key_value(_decode_kv_wire(reply))


def _decode_range(reply: Reply) -> RangeResult:
    wire = _decode_range_wire(reply)
    return RangeResult(
        items=[key_value(i) for i in wire.items],
        count=wire.count,
        next_after=wire.next_after,
        revision=wire.revision,
    )


# -- encoding ----------------------------------------------------------------------------------


def key_path(key: str) -> str:
    if not key:
        raise ValueError("key must not be empty")
    return "/kv/" + urllib.parse.quote(key, safe="")


def _with_query(path: str, params: Mapping[str, str | int | None]) -> str:
    query = {k: str(v) for k, v in params.items() if v is not None}
    return f"{path}?{urllib.parse.urlencode(query)}" if query else path


def _check_revision(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or value < 0):
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def _consistency(consistency: str) -> str | None:
    if consistency not in CONSISTENCY_LEVELS:
        raise ValueError(f"consistency must be one of {CONSISTENCY_LEVELS}, got {consistency!r}")
    return None if consistency == "linearizable" else consistency


def _value_body(value: Value) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), (("Content-Type", OCTET_STREAM),)
    if isinstance(value, str):
        return msgspec.json.encode({"value": value}), (("Content-Type", JSON),)
    raise TypeError(f"value must be str or bytes, not {type(value).__name__}")


def _conditions(if_match: int | None, if_absent: bool) -> tuple[tuple[str, str], ...]:
    if if_match is not None and if_absent:
        raise ValueError("if_match and if_absent are exclusive")
    _check_revision("if_match", if_match)
    if if_match is not None:
        return (("If-Match", f'"{if_match}"'),)
    if if_absent:
        return (("If-None-Match", "*"),)
    return ()


def put(
    key: str, value: Value, *, if_match: int | None = None, if_absent: bool = False
) -> Call[PutResult]:
    body, headers = _value_body(value)
    return Call(
        "PUT",
        key_path(key),
        Kind.WRITE,
        _decode_put,
        body=body,
        headers=headers + _conditions(if_match, if_absent),
        name="put",
    )


def get(
    key: str,
    *,
    revision: int | None = None,
    consistency: str = "linearizable",
    min_revision: int | None = None,
) -> Call[KeyValue]:
    _check_revision("revision", revision)
    _check_revision("min_revision", min_revision)
    params = {
        "revision": revision,
        "consistency": _consistency(consistency),
        "min_revision": min_revision,
    }
    return Call("GET", _with_query(key_path(key), params), Kind.READ, _decode_get, name="get")


def delete(key: str, *, if_match: int | None = None) -> Call[DeleteResult]:
    return Call(
        "DELETE",
        key_path(key),
        Kind.WRITE,
        _decode_delete,
        headers=_conditions(if_match, False),
        name="delete",
    )


@dataclass(frozen=True, slots=True)
class RangeQuery:
    """A range read: `prefix`, or the half-open `[start, end)`; see `range_params`."""

    prefix: str | None = None
    start: str | None = None
    end: str | None = None
    limit: int | None = None
    after: str | None = None
    keys_only: bool = False
    count_only: bool = False
    revision: int | None = None
    consistency: str = "linearizable"
    min_revision: int | None = None


def range_params(q: RangeQuery) -> dict[str, str | int | None]:
    if q.prefix is None and q.start is None:
        raise ValueError("a range needs prefix= or start=")
    if q.prefix is not None and (q.start is not None or q.end is not None):
        raise ValueError("prefix= excludes start= and end=")
    if q.limit is not None and not 1 <= q.limit <= 10_000:
        raise ValueError("limit must be 1..10000")
    _check_revision("revision", q.revision)
    _check_revision("min_revision", q.min_revision)
    return {
        "prefix": q.prefix,
        "start": q.start,
        "end": q.end,
        "limit": q.limit,
        "after": q.after,
        "keys_only": "true" if q.keys_only else None,
        "count_only": "true" if q.count_only else None,
        "revision": q.revision,
        "consistency": _consistency(q.consistency),
        "min_revision": q.min_revision,
    }


def range_(q: RangeQuery) -> Call[RangeResult]:
    return Call("GET", _with_query("/kv", range_params(q)), Kind.READ, _decode_range, name="range")


def next_page(q: RangeQuery, page: RangeResult) -> RangeQuery | None:
    """The query for the page after `page`, pinned at `page`'s revision; None after the last.

    Pinning the revision makes the pages one consistent snapshot (the server reads them all at
    that revision)."""
    if page.next_after is None:
        return None
    pinned = q.revision if q.revision is not None else (page.revision or None)
    return RangeQuery(
        prefix=q.prefix,
        start=q.start,
        end=q.end,
        limit=q.limit,
        after=page.next_after,
        keys_only=q.keys_only,
        count_only=q.count_only,
        revision=pinned,
        consistency=q.consistency,
    )


def delete_prefix(prefix: str) -> Call[DeleteRangeResult]:
    if not prefix:
        raise ValueError("refusing to delete with an empty prefix (it would delete every key)")
    return Call(
        "DELETE",
        _with_query("/kv", {"prefix": prefix}),
        Kind.WRITE,
        _decode_delete_range,
        name="delete_prefix",
    )


def txn(request: TxnRequest) -> Call[TxnResult]:
    return Call(
        "POST",
        "/txn",
        Kind.WRITE,
        decode_txn,
        body=txn_body(request),
        headers=(("Content-Type", JSON),),
        name="txn",
    )


def compact(revision: int) -> Call[int]:
    """Compacting twice to one revision leaves the same state, so it may be re-sent (the
    server refuses session headers on /compact); `programs.compact` turns the copy's 410 at
    exactly this revision back into success."""
    _check_revision("revision", revision)

    def decode(reply: Reply) -> int:
        return _decode_compact(reply).compact_revision

    return Call(
        "POST",
        "/compact",
        Kind.IDEMPOTENT,
        decode,
        body=msgspec.json.encode({"revision": revision}),
        headers=(("Content-Type", JSON),),
        name="compact",
    )


def cluster_status() -> Call[ClusterStatus]:
    return Call("GET", "/cluster/status", Kind.READ, _decode_status, name="status")


def open_session(ttl_s: int | None = None) -> Call[SessionInfo]:
    # A duplicate open only leaves an unused session behind, which expires: safe to re-send.
    if ttl_s is None:
        return Call("POST", "/session", Kind.IDEMPOTENT, _decode_session, name="open_session")
    return Call(
        "POST",
        "/session",
        Kind.IDEMPOTENT,
        _decode_session,
        body=msgspec.json.encode({"ttl_s": ttl_s}),
        headers=(("Content-Type", JSON),),
        name="open_session",
    )


def auth_token(user: str, password: str) -> Call[str]:
    def decode(reply: Reply) -> str:
        return _decode_token(reply).token

    body = msgspec.json.encode({"name": user, "password": password})
    return Call(
        "POST",
        "/auth/token",
        Kind.IDEMPOTENT,
        decode,
        body=body,
        headers=(("Content-Type", JSON),),
        name="auth_token",
    )


# -- errors ------------------------------------------------------------------------------------


def error_from_reply(reply: Reply, endpoint: str | None = None) -> RaftkvError:
    """The exception for a non-2xx reply, classified by its `code` (then by status)."""
    try:
        doc: Any = msgspec.json.decode(reply.body)
    except msgspec.DecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("code"), str):
        code: str = doc["code"]
        message = str(doc.get("error") or code)
        details = {k: v for k, v in doc.items() if k not in ("error", "code")}
    else:
        code = ""
        message = f"HTTP {reply.status}: {reply.body[:200]!r}"
        details = {}
    cls = error_class(reply.status, code)
    return cls(message, status=reply.status, code=code, details=details, endpoint=endpoint)


def is_success(reply: Reply) -> bool:
    return 200 <= reply.status < 300
