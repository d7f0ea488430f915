"""Command encoding: version byte, round trips, stable bytes, clear errors."""

from __future__ import annotations

import pytest

from raftkv.codec.commands import (
    COMMAND_VERSION,
    CommandDecodeError,
    decode_command,
    encode_command,
)
from raftkv.kv.commands import Command, Delete, Put


@pytest.mark.parametrize(
    "cmd",
    [Put("k", "v"), Put("", ""), Put("ключ/🔑", "значение" * 100), Delete("k"), Delete("")],
)
def test_round_trip(cmd: Command) -> None:
    data = encode_command(cmd)
    assert data[0] == COMMAND_VERSION
    assert decode_command(data) == cmd
    assert decode_command(memoryview(data)) == cmd


def test_encoding_is_stable() -> None:
    # These bytes are in Raft logs on disk: changing them breaks every existing log.
    assert encode_command(Put("a", "b")) == b"\x01\x93\x01\xa1a\xa1b"
    assert encode_command(Delete("a")) == b"\x01\x92\x02\xa1a"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"\x02\x92\x02\xa1a", "unsupported command version 2"),
        (b"\x00", "unsupported command version 0"),
        (b"\x01", "malformed"),
        (b"\x01\x92\x09\xa1a", "unknown command kind tag 9"),
        (b"\x01\x92\x01\xa1a", "malformed"),  # Put without its value
        (b"\x01\x93\x01\xa1a\x05", "malformed"),  # value not a string
        (b"\x01\xc1", "malformed"),  # invalid msgpack opcode
        (b"\x01\x93\x01\xa2a", "malformed"),  # truncated string
    ],
)
def test_undecodable_data_raises_command_decode_error(data: bytes, words: str) -> None:
    with pytest.raises(CommandDecodeError, match=words):
        decode_command(data)


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(CommandDecodeError, ValueError)
