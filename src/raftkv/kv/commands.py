"""Commands the replicated state machine applies, and their results.

Rules:
- A command is a frozen msgspec Struct registered in `raftkv.kv.registry` (tag, name, the
  command-set version that introduced it) and a member of the static `Command` union (mypy and
  the decoder see the union; a test checks it equals the registry).
- How to add a kind (two places, plus the golden test list):
  1. here (or in a kv module of its own, imported here): declare it with the next free tag of
     your block (below), the decorator, and add it to `Command`:
         @command_kind("txn", since=COMMAND_SET_VERSION)
         class Txn(CommandBase, frozen=True, tag=3): ...
  2. `raftkv.kv.machine.apply_command`: a `case` that applies it (and a Result type here).
  Then append `tag name since` to `tests/unit/kv/command_kinds.golden`. Never change a line
  there; never reuse a tag, even of a retired kind. Fields are appended, with defaults, only.
- Tag blocks for this round, so parallel work does not collide: 3-15 data model (txn, session,
  compaction...), 16-23 auth (users, roles), 24-31 durability (alarms), 32+ anything else.
- A node that reads a committed entry of a kind it does not know stops (it never skips it):
  `raftkv.codec.commands` raises `UnknownCommandKind` with the tag, and the state machine
  names the entry's index (`raftkv.storage.state.apply_entry`).
- Data-model kinds (since=2): 3 txn, 4 delete_range, 5 compact, 6 open_session,
  7 session_request (8-15 stay free for leases and watches).
- Durability kinds (since=2, `raftkv.kv.quota`): 24 alarm, 25 space_quota.
- A write's revision is the Raft index of the entry that carries it (see `raftkv.kv.mvcc`), so a
  command never carries its own revision.
- Time reaches the state machine only inside commands (`time_ms`, stamped by the leader that
  proposed them; thesis §6.3): no node's clock decides what apply does.
- Results are plain values computed by `raftkv.kv.machine.apply_command`. They never go between
  peers, but a session's remembered replies are kept in the state (and its snapshots), so result
  fields, like command fields, are only appended.
- Values are text (str) or binary (bytes): msgpack keeps the two apart (str vs bin), so a value
  read back has the type it was written with.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    Value = str | bytes
else:
    # msgspec refuses a `str | bytes` union, but decodes `Any` by the msgpack type: str stays
    # str, bin becomes bytes. Type checkers see the precise union.
    Value = Any


from raftkv.kv.auth import AuthCommand, AuthResult
from raftkv.kv.quota import NoSpace, SpaceCommand, SpaceResult
from raftkv.kv.registry import COMMAND_SET_VERSION, CommandBase, command_kind

__all__ = [
    "COMMAND_SET_VERSION",
    "Command",
    "CommandBase",
    "Compact",
    "Delete",
    "DeleteRange",
    "DeleteResult",
    "KeyValue",
    "OpenSession",
    "Put",
    "PutResult",
    "Result",
    "SessionRequest",
    "Txn",
]


@command_kind("put", since=1)
class Put(CommandBase, frozen=True, tag=1):
    """Set `key` to `value`, creating or overwriting it."""

    key: str
    value: Value


@command_kind("delete", since=1)
class Delete(CommandBase, frozen=True, tag=2):
    """Remove `key` if present; deleting an absent key is not an error."""

    key: str


class Target(IntEnum):
    """What a `Compare` reads from the key (an absent key has version/revisions 0)."""

    VALUE = 0
    VERSION = 1
    MOD_REVISION = 2
    CREATE_REVISION = 3


class CompareOp(IntEnum):
    EQ = 0
    NE = 1
    LT = 2
    GT = 3


class Compare(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """`key`'s `target` `op` `value`; a value compare on an absent key is false."""

    key: str
    target: Target
    op: CompareOp
    value: int | Value


class _OpBase(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Shared options of transaction ops (tagged inside a Txn only, not command kinds)."""


class GetOp(_OpBase, frozen=True, tag=1):
    """Read `key` (or every key starting with `key` when `prefix`) inside a transaction."""

    key: str
    prefix: bool = False


class PutOp(_OpBase, frozen=True, tag=2):
    key: str
    value: Value


class DeleteOp(_OpBase, frozen=True, tag=3):
    """Delete `key` (or every key starting with `key` when `prefix`)."""

    key: str
    prefix: bool = False


TxnOp = GetOp | PutOp | DeleteOp


@command_kind("txn", since=COMMAND_SET_VERSION)
class Txn(CommandBase, frozen=True, tag=3):
    """If every compare holds, run `success`, else `failure`; atomically, at one revision."""

    compare: list[Compare]
    success: list[TxnOp]
    failure: list[TxnOp]


@command_kind("delete_range", since=COMMAND_SET_VERSION)
class DeleteRange(CommandBase, frozen=True, tag=4):
    """Delete every key starting with `prefix` (never empty: refused before proposing)."""

    prefix: str


@command_kind("compact", since=COMMAND_SET_VERSION)
class Compact(CommandBase, frozen=True, tag=5):
    """Discard history below `revision` (reads below it get `compacted`)."""

    revision: int


@command_kind("open_session", since=COMMAND_SET_VERSION)
class OpenSession(CommandBase, frozen=True, tag=6):
    """Open a client session (thesis §6.3); its id is this entry's index."""

    ttl_ms: int
    time_ms: int  # the proposing leader's clock


# The writes a session request may carry.
SessionWrite = Put | Delete | Txn | DeleteRange


@command_kind("session_request", since=COMMAND_SET_VERSION)
class SessionRequest(CommandBase, frozen=True, tag=7):
    """`cmd` applied at most once per (`session_id`, `seq`); replies below `ack` forgotten."""

    session_id: int
    seq: int
    ack: int
    time_ms: int  # the proposing leader's clock
    cmd: SessionWrite


# The decodable union: every registered kind, nothing else (tests/unit/kv/test_command_registry).
Command = (
    Put
    | Delete
    | Txn
    | DeleteRange
    | Compact
    | OpenSession
    | SessionRequest
    | AuthCommand
    | SpaceCommand
)


class KeyValue(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A key's value and metadata at some revision (etcd's mvccpb.KeyValue)."""

    key: str
    value: Value
    create_revision: int  # revision of the write that created this generation of the key
    mod_revision: int  # revision of the last write; create_revision <= mod_revision
    version: int  # writes since creation, >= 1; a delete ends the generation


class _ResultBase(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Shared options of every result."""


class PutResult(_ResultBase, frozen=True, tag=1):
    """`Put` always succeeds once applied; `revision` is the write's revision."""

    revision: int = 0


class DeleteResult(_ResultBase, frozen=True, tag=2):
    """`existed` is False when the key was absent (the delete changed nothing)."""

    existed: bool
    revision: int = 0  # the store's revision after the command (unchanged if nothing existed)


class RangeResult(_ResultBase, frozen=True, tag=3):
    """A transaction's `get`: the matching keys in key order."""

    kvs: list[KeyValue]


class DeleteRangeResult(_ResultBase, frozen=True, tag=4):
    deleted: int
    revision: int  # the store's revision after the command


OpResult = RangeResult | PutResult | DeleteRangeResult


class TxnResult(_ResultBase, frozen=True, tag=5):
    """`results` has one entry per op of the branch that ran."""

    succeeded: bool
    revision: int  # the store's revision after the transaction
    results: list[OpResult]


class CompactResult(_ResultBase, frozen=True, tag=6):
    """`ok` False: the revision was already compacted or is in the future (nothing changed)."""

    ok: bool
    compact_revision: int
    revision: int


class SessionResult(_ResultBase, frozen=True, tag=7):
    session_id: int
    ttl_ms: int


class SessionError(_ResultBase, frozen=True, tag=8):
    """A session request that was not applied: `code` is `session_expired` or `stale_request`."""

    code: str
    session_id: int
    seq: int


Result = (
    PutResult
    | DeleteResult
    | TxnResult
    | DeleteRangeResult
    | CompactResult
    | SessionResult
    | SessionError
    | AuthResult
    | NoSpace
    | SpaceResult
)
