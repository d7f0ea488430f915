"""Errors of the storage layer.

Tree:
    StorageError               base of everything storage raises on purpose
    ├── CorruptLogError        the Raft log file fails verification (CRC, contiguity, schema);
    │                          the node must refuse to start with this message
    ├── CorruptSnapshotError   a snapshot file fails verification; it is refused, state unchanged
    └── ApplyOrderError        entries handed to a state machine skip an index: a broken
                               invariant of the caller, the node must stop

Messages name the file and, where there is one, the log index, so an operator can act on them.
An undecodable command inside an applied entry raises `raftkv.codec.commands.CommandDecodeError`
unchanged (also fatal: every node holds the same entry).
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
