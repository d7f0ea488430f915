"""Commands the replicated state machine applies, and their results.

Rules:
- A command is a frozen msgspec Struct in the `Command` tagged union; it is what a client's write
  becomes inside a log entry (`raftkv.codec.commands` turns it into bytes with a version byte).
- Tags are small integers fixed forever: a tag is never reused or renumbered, and a field is only
  ever appended (with a default) to an existing command, so entries written by an older node
  decode the same on a newer one. Reserved for planned commands: 3 CAS, 4 Txn, 5 LeaseGrant,
  6 LeaseRevoke (unused until those commands exist).
- Results are plain values computed by `raftkv.kv.machine.apply_command`; they never go on the
  wire between peers (every node computes its own), so they may change shape freely.
- Keys and values are text (str) for now; binary values come with the data-model work.
"""

from __future__ import annotations

import msgspec


class _CommandBase(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Shared options of every command: compact positional encoding, immutable."""


class Put(_CommandBase, frozen=True, tag=1):
    """Set `key` to `value`, creating or overwriting it."""

    key: str
    value: str


class Delete(_CommandBase, frozen=True, tag=2):
    """Remove `key` if present; deleting an absent key is not an error."""

    key: str


# The decodable union. A new command joins it with a new, never-used tag.
Command = Put | Delete


class PutResult(msgspec.Struct, frozen=True, gc=False):
    """`Put` always succeeds once applied."""


class DeleteResult(msgspec.Struct, frozen=True, gc=False):
    """`existed` is False when the key was absent (the delete changed nothing)."""

    existed: bool


Result = PutResult | DeleteResult
