"""Storage failures on a durability path: classified once, reported in one line, fatal.

Rules:
- An error from the disk (`OSError`, `lmdb.Error`, `sqlite3.Error`) on any path that makes
  something durable (log save, apply, state sync, snapshot build/install, compaction, a
  directory fsync) is NOT retried: after a failed fsync Linux may mark the dirty pages clean
  ("fsyncgate", PostgreSQL 2018), so a retry can report success for data that never reached the
  disk. The node stops, acknowledging nothing after the fault, and exits with `EXIT_IOERR` (74,
  sysexits' EX_IOERR).
- `describe()` turns such an error into ONE line naming the operation, the file, the errno by
  name and text, and what to do: an operator reads it in the log or on stderr and can act.
- SQLite does not expose errno; its result codes are mapped: SQLITE_FULL is ENOSPC (SQLite's
  unix VFS returns it exactly when a write fails with ENOSPC), SQLITE_IOERR_* is EIO with the
  failing operation from the extended code. LMDB reports errno values as their strerror text,
  which is mapped back to the errno name.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import lmdb

EXIT_IOERR = 74  # sysexits.h EX_IOERR

_SQLITE_FULL = 13
_SQLITE_IOERR = 10
# Extended SQLITE_IOERR_* codes (sqlite3.h): the operation that failed.
_SQLITE_IOERR_OPS = {
    1: "read",
    2: "read",
    3: "write",
    4: "fdatasync",  # SQLite's unix VFS syncs with fdatasync on Linux
    5: "fsync (directory)",
    6: "ftruncate",
    7: "fstat",
    8: "unlock",
    9: "lock",
    10: "unlink",
    13: "open (shared memory)",
    24: "lock",
    28: "fdatasync",
}
_STRERROR = {os.strerror(n): n for n in sorted(errno.errorcode, reverse=True)}


def is_storage_error(exc: BaseException) -> bool:
    """True for errors that come from the disk (or a storage library reporting one)."""
    return isinstance(exc, OSError | lmdb.Error | sqlite3.Error | StorageFailure)


@dataclass(frozen=True, slots=True)
class Classified:
    operation: str
    errno_name: str  # "EIO", "ENOSPC", ... or "" when unknown
    text: str


class StorageFailure(Exception):
    """A storage error on a durability path, with what was being done and to which file."""

    def __init__(self, operation: str, path: Path | str, cause: BaseException) -> None:
        self.operation = operation
        self.path = str(path)
        self.cause = cause
        super().__init__(describe(cause, operation, path))


def classify(exc: BaseException, operation: str) -> Classified:
    if isinstance(exc, StorageFailure):
        return classify(exc.cause, exc.operation)
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, f"errno {exc.errno}")
        return Classified(operation, name, exc.strerror or os.strerror(exc.errno))
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF == _SQLITE_FULL:
            return Classified("write", "ENOSPC", os.strerror(errno.ENOSPC))
        if code is not None and code & 0xFF == _SQLITE_IOERR:
            # The extended code names the failing call better than our caller can.
            op = _SQLITE_IOERR_OPS.get(code >> 8, operation)
            return Classified(op, "EIO", os.strerror(errno.EIO))
        text = str(exc)
        if "disk is full" in text:
            return Classified(operation, "ENOSPC", os.strerror(errno.ENOSPC))
        if "disk I/O error" in text:
            return Classified(operation, "EIO", os.strerror(errno.EIO))
        return Classified(operation, "", text)
    text = str(exc)
    for message, number in _STRERROR.items():
        if message and message in text:
            return Classified(operation, errno.errorcode[number], message)
    if isinstance(exc, lmdb.MapFullError):
        return Classified(operation, "ENOSPC", "LMDB map full")
    return Classified(operation, "", text or type(exc).__name__)


def advice(errno_name: str) -> str:
    if errno_name in ("ENOSPC", "EDQUOT"):
        return "free space and restart"
    if errno_name in ("EROFS", "EACCES", "EPERM"):
        return "make the data directory writable by the node, then restart"
    return "check the disk (dmesg, SMART), then restart"


def describe(exc: BaseException, operation: str, path: Path | str) -> str:
    """The one line an operator reads: operation, file, errno name + text, what to do."""
    c = classify(exc, operation)
    err = f"{c.errno_name} ({c.text})" if c.errno_name else c.text
    return (
        f"storage failure: {c.operation} {path}: {err}; the node stopped without "
        f"acknowledging anything after it; {advice(c.errno_name)}"
    )


def wrap(exc: BaseException, operation: str, path: Path | str) -> BaseException:
    """`exc` as a StorageFailure if it is a storage error (else unchanged)."""
    if isinstance(exc, StorageFailure) or not is_storage_error(exc):
        return exc
    return StorageFailure(operation, path, exc)
