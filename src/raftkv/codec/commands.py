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

from raftkv.kv.commands import Command

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
        return _decoder.decode(memoryview(data)[1:])
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise CommandDecodeError(f"malformed command (version {version}): {exc}") from exc
