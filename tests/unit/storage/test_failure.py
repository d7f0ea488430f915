"""storage/failure.py: one line per storage failure, errno named, advice that fits."""

from __future__ import annotations

import errno
import sqlite3

import lmdb
import pytest

from raftkv.storage.failure import StorageFailure, classify, describe, is_storage_error, wrap


def sqlite_error(code: int, text: str) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(text)
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    return exc


def test_oserror_names_errno_and_advice() -> None:
    exc = OSError(errno.EIO, "Input/output error")
    line = describe(exc, "fdatasync", "data/node-3/raft.db")
    assert line == (
        "storage failure: fdatasync data/node-3/raft.db: EIO (Input/output error); the node "
        "stopped without acknowledging anything after it; check the disk (dmesg, SMART), then "
        "restart"
    )
    assert "\n" not in line


def test_enospc_says_free_space() -> None:
    line = describe(OSError(errno.ENOSPC, "No space left on device"), "write", "x/snap.tmp")
    assert "ENOSPC (No space left on device)" in line
    assert line.endswith("free space and restart")


@pytest.mark.parametrize(
    ("code", "op", "name"),
    [
        (13, "write", "ENOSPC"),  # SQLITE_FULL
        (10 | (4 << 8), "fdatasync", "EIO"),  # SQLITE_IOERR_FSYNC
        (10 | (3 << 8), "write", "EIO"),  # SQLITE_IOERR_WRITE
        (10, "log commit", "EIO"),  # plain SQLITE_IOERR: the caller's operation
    ],
)
def test_sqlite_codes_map_to_errno(code: int, op: str, name: str) -> None:
    c = classify(sqlite_error(code, "disk I/O error"), "log commit")
    assert (c.operation, c.errno_name) == (op, name)


def test_sqlite_disk_full_text_without_code() -> None:
    c = classify(sqlite3.OperationalError("database or disk is full"), "log commit")
    assert c.errno_name == "ENOSPC"


def test_lmdb_error_text_maps_back_to_errno() -> None:
    c = classify(lmdb.Error("mdb_txn_commit: Input/output error"), "apply")
    assert c.errno_name == "EIO"
    c = classify(lmdb.Error("mdb_txn_commit: No space left on device"), "apply")
    assert c.errno_name == "ENOSPC"


def test_wrap_keeps_non_storage_errors() -> None:
    bug = ValueError("not storage")
    assert wrap(bug, "apply", "x") is bug
    wrapped = wrap(OSError(errno.EIO, "Input/output error"), "apply", "state")
    assert isinstance(wrapped, StorageFailure)
    assert wrap(wrapped, "other", "y") is wrapped
    assert is_storage_error(lmdb.Error("x")) and is_storage_error(sqlite3.Error("y"))
    assert not is_storage_error(bug)
