"""The KV state machine's apply logic, pure, over a small storage port.

Rules:
- `apply_command` is deterministic: the same commands applied to the same state give the same
  state and results on every node. No clock, no randomness, no I/O beyond the port.
- The port (`KVBatch`) is what one atomic batch of a backend offers: `get`, `put`, `delete`.
  The backend decides the atomicity (LMDB: one write transaction per applied batch of entries);
  this module only states what each command does to it.
- `DictState` is a plain-dict implementation of the port for the simulator and tests; it has
  no durability and its "batch" is the dict itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from raftkv.kv.auth import (
    RoleDelete,
    RolePermission,
    RolePut,
    SigningKey,
    UserDelete,
    UserPut,
    UserRole,
    apply_auth,
)
from raftkv.kv.commands import Command, Delete, DeleteResult, Put, PutResult, Result


class KVBatch(Protocol):
    """What the apply logic needs from a storage backend inside one atomic batch."""

    def get(self, key: str) -> str | None: ...

    def put(self, key: str, value: str) -> None: ...

    def delete(self, key: str) -> bool:
        """Remove `key`; True if it was present."""
        ...


def apply_command(batch: KVBatch, cmd: Command) -> Result:
    """Apply one decoded command to `batch` and return its result."""
    match cmd:
        case Put(key=key, value=value):
            batch.put(key, value)
            return PutResult()
        case Delete(key=key):
            return DeleteResult(existed=batch.delete(key))
        case UserPut() | UserDelete() | UserRole() | RolePut() | RoleDelete() | RolePermission():
            return apply_auth(batch, cmd)
        case SigningKey():
            return apply_auth(batch, cmd)
    # Unreachable while Command is a closed union; a new command must get a case above.
    raise TypeError(f"unknown command type {type(cmd).__name__}")


class DictState:
    """A `KVBatch` over a dict: the simulator's and tests' state machine storage."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, str] | None = None) -> None:
        self._data: dict[str, str] = dict(data) if data else {}

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def put(self, key: str, value: str) -> None:
        self._data[key] = value

    def delete(self, key: str) -> bool:
        return self._data.pop(key, None) is not None

    def __len__(self) -> int:
        return len(self._data)

    def items(self, prefix: str = "") -> Iterator[tuple[str, str]]:
        """(key, value) pairs whose key starts with `prefix`, in key order.

        Sorted because dict order is insertion order, which differs between nodes that reached
        the same state differently (e.g. by snapshot vs by log); callers must see one order.
        """
        for key in sorted(self._data):
            if key.startswith(prefix):
                yield key, self._data[key]

    def clear(self) -> None:
        self._data.clear()

    def copy(self) -> DictState:
        return DictState(self._data)
