"""Bytes of a KV command inside a log entry: one version byte, then msgpack.

Rules:
- Layout: `COMMAND_VERSION` (one byte), then the msgspec msgpack encoding of a `Command`
  (array-like: `[tag, field, ...]`). The version byte changes only if this layout changes;
  adding a command does not change it (the union's tags carry that).
- `decode_command` raises `CommandDecodeError` (never a msgspec or IndexError) for anything it
  cannot decode: empty data, an unknown version, an unknown tag, malformed msgpack. A committed
  entry that does not decode is the same on every node, so the caller must treat it as fatal
  (a newer node proposed something this one does not understand), not skip it.
- No pickle; nothing here allocates more than the input needs.
"""

from __future__ import annotations

import msgspec

from raftkv.kv.commands import Command, Put, PutOp, SessionRequest, Txn

COMMAND_VERSION = 1

_VERSION_PREFIX = bytes([COMMAND_VERSION])
_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Command] = msgspec.msgpack.Decoder(Command)


class CommandDecodeError(ValueError):
    """Entry data that is not a command this version understands."""


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
