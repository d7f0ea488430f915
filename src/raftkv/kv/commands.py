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
- Results are plain values computed by `raftkv.kv.machine.apply_command`; they never go on the
  wire between peers (every node computes its own), so they may change shape freely.
- Keys and values are text (str) for now; binary values come with the data-model work.
"""

from __future__ import annotations

import msgspec

from raftkv.kv.registry import COMMAND_SET_VERSION, CommandBase, command_kind

__all__ = [
    "COMMAND_SET_VERSION",
    "Command",
    "CommandBase",
    "Delete",
    "DeleteResult",
    "Put",
    "PutResult",
    "Result",
]


@command_kind("put", since=1)
class Put(CommandBase, frozen=True, tag=1):
    """Set `key` to `value`, creating or overwriting it."""

    key: str
    value: str


@command_kind("delete", since=1)
class Delete(CommandBase, frozen=True, tag=2):
    """Remove `key` if present; deleting an absent key is not an error."""

    key: str


# The decodable union: every registered kind, nothing else (tests/unit/kv/test_command_registry).
Command = Put | Delete


class PutResult(msgspec.Struct, frozen=True, gc=False):
    """`Put` always succeeds once applied."""


class DeleteResult(msgspec.Struct, frozen=True, gc=False):
    """`existed` is False when the key was absent (the delete changed nothing)."""

    existed: bool


Result = PutResult | DeleteResult
