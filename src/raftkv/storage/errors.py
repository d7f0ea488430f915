"""Errors of the storage layer.

Tree:
    StorageError               base of everything storage raises on purpose
    ├── CorruptLogError        the Raft log file fails verification (CRC, contiguity, schema);
    │                          the node must refuse to start with this message
    ├── CorruptSnapshotError   a snapshot file fails verification; it is refused, state unchanged
    ├── ApplyOrderError        entries handed to a state machine skip an index: a broken
    │                          invariant of the caller, the node must stop
    └── UndecodableEntryError  a committed entry holds a command this node cannot decode (an
                               unknown kind from a newer node, or garbage); names the index and,
                               for an unknown kind, its tag (`.tag`). Fatal, never skipped:
                               every node holds the same entry

Messages name the file and, where there is one, the log index, so an operator can act on them.
"""

from __future__ import annotations


class StorageError(Exception):
    pass


class CorruptLogError(StorageError):
    pass


class CorruptSnapshotError(StorageError):
    pass


class ApplyOrderError(StorageError):
    pass


class UndecodableEntryError(StorageError):
    def __init__(self, index: int, tag: int | None, reason: str) -> None:
        super().__init__(f"committed entry {index} cannot be applied: {reason}")
        self.index = index
        self.tag = tag  # the unknown command kind's tag, if that is the reason
