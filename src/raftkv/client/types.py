"""Typed results and transaction building blocks of `raftkv.client`.

Rules:
- Every result is a frozen msgspec Struct: immutable, typed, cheap, and `msgspec.to_builtins`
  turns it into JSON for the CLI's `--json`.
- Revision fields are 0 when the server did not send them (a server older than revisions);
  `0` is also etcd's "absent" revision, so comparisons stay meaningful.
- A value is `str` for text and `bytes` for a binary value (stored with
  `application/octet-stream`); `.text` and `.data` convert. `value` is None only in a
  `keys_only` range.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Value = str | bytes
CompareTarget = Literal["value", "version", "mod_revision", "create_revision"]
CompareOp = Literal["==", "!=", "<", ">"]


class KeyValue(msgspec.Struct, frozen=True):
    """One key with its value and revisions."""

    key: str
    value: Value | None
    create_revision: int = 0  # revision of the write that created this generation of the key
    mod_revision: int = 0  # revision of the last write to the key: pass to `if_match`
    version: int = 0  # writes since creation (1 after the first put)

    @property
    def text(self) -> str:
        """The value as text (a binary value is decoded as UTF-8)."""
        if self.value is None:
            raise ValueError(f"{self.key!r}: no value (keys_only listing)")
        return self.value if isinstance(self.value, str) else self.value.decode("utf-8")

    @property
    def data(self) -> bytes:
        """The value as bytes (text is encoded as UTF-8)."""
        if self.value is None:
            raise ValueError(f"{self.key!r}: no value (keys_only listing)")
        return self.value.encode("utf-8") if isinstance(self.value, str) else self.value


class PutResult(msgspec.Struct, frozen=True):
    key: str
    revision: int = 0  # the cluster revision of this write (its key's new mod_revision)


class DeleteResult(msgspec.Struct, frozen=True):
    key: str
    revision: int = 0


class RangeResult(msgspec.Struct, frozen=True):
    """One page of a range read at one revision."""

    items: list[KeyValue]
    count: int  # every key matching the range, not just this page
    next_after: str | None  # pass as `after=` for the next page; None on the last page
    revision: int = 0  # the revision the page was read at: pass as `revision=` to keep paging


class DeleteRangeResult(msgspec.Struct, frozen=True):
    deleted: int
    revision: int = 0


class GetOpResult(msgspec.Struct, frozen=True, tag_field="op", tag="get"):
    """A txn `get`: the key (a list of one, or none) or every key of a prefix."""

    items: list[KeyValue]
    count: int


class PutOpResult(msgspec.Struct, frozen=True, tag_field="op", tag="put"):
    revision: int


class DeleteOpResult(msgspec.Struct, frozen=True, tag_field="op", tag="delete"):
    deleted: int


OpResult = GetOpResult | PutOpResult | DeleteOpResult


class TxnResult(msgspec.Struct, frozen=True):
    succeeded: bool  # True: the compares held and `success` ran; False: `failure` ran
    revision: int
    results: list[OpResult]  # one per op of the branch that ran, in order


class SessionInfo(msgspec.Struct, frozen=True):
    session_id: int | str
    ttl_s: float


class NodeInfo(msgspec.Struct, frozen=True):
    id: str
    address: str
    state: str
    is_leader: bool = False
    http_address: str | None = None
    term: int = 0
    commit_index: int = 0
    applied_index: int = 0
    last_index: int = 0


class ClusterStatus(msgspec.Struct, frozen=True):
    cluster_size: int
    local_node_id: str
    leader: str | None
    nodes: dict[str, NodeInfo]
    is_leader: bool = False
    timestamp: str = ""


# -- transactions ------------------------------------------------------------------------------


# Bytes in a compare or put travel as base64 with "value_encoding": "base64" (the API's rule);
# `protocol.txn` does that, so these hold plain `str | bytes`.


class Compare(msgspec.Struct, frozen=True):
    """`target` of `key` compared with `value`: e.g. Compare("k", "mod_revision", "==", 7).
    `value` is an int for version / mod_revision / create_revision, the value for "value"."""

    key: str
    target: CompareTarget
    op: CompareOp
    value: int | Value


class Get(msgspec.Struct, frozen=True, tag_field="op", tag="get"):
    """Read `key`, or with prefix=True every key starting with `key`."""

    key: str
    prefix: bool = False


class Put(msgspec.Struct, frozen=True, tag_field="op", tag="put"):
    key: str
    value: Value


class Delete(msgspec.Struct, frozen=True, tag_field="op", tag="delete"):
    """Delete `key`, or with prefix=True every key starting with `key` (not empty)."""

    key: str
    prefix: bool = False


TxnOp = Get | Put | Delete


class TxnRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of POST /txn (also what `raftkv txn` reads)."""

    compare: list[Compare] = msgspec.field(default_factory=list)
    success: list[TxnOp] = msgspec.field(default_factory=list)
    failure: list[TxnOp] = msgspec.field(default_factory=list)
