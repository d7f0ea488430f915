"""Reply shapes shared by `protocol` and `txn_codec`: the raw reply, a key-value as the server
writes it (binary values base64 with `"value_encoding": "base64"`), and the decoder helper
that turns a malformed body into `ServerError` instead of a raw traceback."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from raftkv.client.errors import ServerError
from raftkv.client.types import KeyValue, Value

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # names lower-cased
    body: bytes


class KeyValueWire(msgspec.Struct):
    key: str
    value: str | None = None  # absent in a keys_only listing
    value_encoding: str | None = None
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0


def decoder(kind: type[T], what: str) -> Callable[[Reply], T]:
    dec = msgspec.json.Decoder(kind)

    def decode(reply: Reply) -> T:
        try:
            return dec.decode(reply.body)
        except msgspec.DecodeError as exc:
            raise ServerError(
                f"malformed {what} reply: {exc}", status=reply.status, code="bad_reply"
            ) from exc

    return decode


def key_value(wire: KeyValueWire) -> KeyValue:
    value: Value | None = wire.value
    if wire.value is not None and wire.value_encoding == "base64":
        try:
            value = base64.b64decode(wire.value, validate=True)
        except ValueError as exc:
            raise ServerError(f"bad base64 value for {wire.key!r}", code="bad_reply") from exc
    elif wire.value_encoding not in (None, "utf-8", "text"):
        raise ServerError(f"unknown value_encoding {wire.value_encoding!r}", code="bad_reply")
    return KeyValue(
        key=wire.key,
        value=value,
        create_revision=wire.create_revision,
        mod_revision=wire.mod_revision,
        version=wire.version,
    )
