"""Bytes of a KV command inside a log entry: one version byte, then msgpack.

Rules:
- Layout: `COMMAND_VERSION` (one byte), then the msgspec msgpack encoding of a `Command`
  (array-like: `[tag, field, ...]`). The version byte changes only if this layout changes;
  adding a command does not change it (the union's tags carry that).
- `decode_command` raises `CommandDecodeError` (never a msgspec or IndexError) for anything it
  cannot decode: empty data, an unknown version, malformed msgpack; and its subclass
  `UnknownCommandKind` (carrying the tag) for a well-formed command whose tag is not in
  `raftkv.kv.registry` - a newer node proposed something this one does not understand. A
  committed entry that does not decode is the same on every node, so the caller must treat it
  as fatal (stop, naming the entry), never skip it.
- No pickle; nothing here allocates more than the input needs.
"""

from __future__ import annotations

import msgspec

from raftkv.kv.commands import Command, Put, PutOp, SessionRequest, Txn
from raftkv.kv.registry import COMMAND_SET_VERSION, kind_by_tag, kinds

COMMAND_VERSION = 1

_VERSION_PREFIX = bytes([COMMAND_VERSION])
_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Command] = msgspec.msgpack.Decoder(Command)


class CommandDecodeError(ValueError):
    """Entry data that is not a command this version understands."""


class UnknownCommandKind(CommandDecodeError):
    """A well-formed command whose kind (tag) this node's registry does not have."""

    def __init__(self, tag: int) -> None:
        known = ", ".join(f"{k.tag} {k.name}" for k in kinds())
        super().__init__(
            f"unknown command kind tag {tag} (this node knows command set {COMMAND_SET_VERSION}:"
            f" {known}); it was proposed by a newer node: upgrade this node"
        )
        self.tag = tag


def encode_command(cmd: Command) -> bytes:
    """The entry data for `cmd`."""
    buf = bytearray(_VERSION_PREFIX)
    _encoder.encode_into(cmd, buf, 1)
    return bytes(buf)


def decode_command(data: bytes | memoryview) -> Command:
    """The command in entry `data`; raises `CommandDecodeError` if it is not one."""
    if len(data) == 0:
        raise CommandDecodeError("empty command data")
    version = data[0]
    if version != COMMAND_VERSION:
        raise CommandDecodeError(
            f"unsupported command version {version} (this node reads version {COMMAND_VERSION})"
        )
    try:
        cmd = _decoder.decode(memoryview(data)[1:])
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        tag = _unknown_tag(memoryview(data)[1:])
        if tag is not None:
            raise UnknownCommandKind(tag) from exc
        raise CommandDecodeError(f"malformed command (version {version}): {exc}") from exc
    _check_values(cmd)
    return cmd


def _check_values(cmd: object) -> None:
    """Values are declared `Any` to msgspec (it cannot express str | bytes): check them here."""
    match cmd:
        case Put(value=value) | PutOp(value=value):
            if not isinstance(value, str | bytes):
                raise CommandDecodeError(f"malformed command: value of type {type(value).__name__}")
        case Txn(compare=compare, success=success, failure=failure):
            for c in compare:
                if isinstance(c.value, bool) or not isinstance(c.value, int | str | bytes):
                    raise CommandDecodeError("malformed command: compare value type")
            for op in (*success, *failure):
                _check_values(op)
        case SessionRequest(cmd=inner):
            _check_values(inner)


def _unknown_tag(payload: memoryview) -> int | None:
    """The tag of a well-formed `[tag, ...]` array whose tag is not registered (error path)."""
    try:
        raw = msgspec.msgpack.decode(payload)
    except msgspec.DecodeError:
        return None
    if isinstance(raw, list) and raw and type(raw[0]) is int and kind_by_tag(raw[0]) is None:
        return int(raw[0])
    return None
