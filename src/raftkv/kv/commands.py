"""Commands the replicated state machine applies, and their results.

Rules:
- A command is a frozen msgspec Struct in the `Command` tagged union; it is what a client's write
  becomes inside a log entry (`raftkv.codec.commands` turns it into bytes with a version byte).
- Tags are small integers fixed forever: a tag is never reused or renumbered, and a field is only
  ever appended (with a default) to an existing command, so entries written by an older node
  decode the same on a newer one. Tags: 1 Put, 2 Delete, 4 Txn, 7 DeleteRange, 8 Compact,
  9 OpenSession, 10 SessionRequest. Reserved: 3 CAS (conditional writes are one-compare Txns,
  so it stays unused), 5 LeaseGrant, 6 LeaseRevoke.
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


class _CommandBase(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Shared options of every command: compact positional encoding, immutable."""


class Put(_CommandBase, frozen=True, tag=1):
    """Set `key` to `value`, creating or overwriting it."""

    key: str
    value: Value


class Delete(_CommandBase, frozen=True, tag=2):
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


class Compare(_CommandBase, frozen=True):
    """`key`'s `target` `op` `value`; a value compare on an absent key is false."""

    key: str
    target: Target
    op: CompareOp
    value: int | Value


class GetOp(_CommandBase, frozen=True, tag=1):
    """Read `key` (or every key starting with `key` when `prefix`) inside a transaction."""

    key: str
    prefix: bool = False


class PutOp(_CommandBase, frozen=True, tag=2):
    key: str
    value: Value


class DeleteOp(_CommandBase, frozen=True, tag=3):
    """Delete `key` (or every key starting with `key` when `prefix`)."""

    key: str
    prefix: bool = False


TxnOp = GetOp | PutOp | DeleteOp


class Txn(_CommandBase, frozen=True, tag=4):
    """If every compare holds, run `success`, else `failure`; atomically, at one revision."""

    compare: list[Compare]
    success: list[TxnOp]
    failure: list[TxnOp]


class DeleteRange(_CommandBase, frozen=True, tag=7):
    """Delete every key starting with `prefix` (never empty: refused before proposing)."""

    prefix: str


class Compact(_CommandBase, frozen=True, tag=8):
    """Discard history below `revision` (reads below it get `compacted`)."""

    revision: int


class OpenSession(_CommandBase, frozen=True, tag=9):
    """Open a client session (thesis §6.3); its id is this entry's index."""

    ttl_ms: int
    time_ms: int  # the proposing leader's clock


# The writes a session request may carry.
SessionWrite = Put | Delete | Txn | DeleteRange


class SessionRequest(_CommandBase, frozen=True, tag=10):
    """`cmd` applied at most once per (`session_id`, `seq`); replies below `ack` forgotten."""

    session_id: int
    seq: int
    ack: int
    time_ms: int  # the proposing leader's clock
    cmd: SessionWrite


# The decodable union. A new command joins it with a new, never-used tag.
Command = Put | Delete | Txn | DeleteRange | Compact | OpenSession | SessionRequest


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
)
