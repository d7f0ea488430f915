"""Test-only fault hooks, driven by environment variables read once at import.

Rules: with the variables unset (always, outside tests) every hook is a dict lookup that does
nothing. They exist so integration tests can stop a REAL node at an exact step (a SIGKILL at a
barrier: nothing after it runs, like a crash) or damage a received file, which no outside
signal can time precisely.

- RAFTKV_TEST_CRASH_AT=<point>: `crash_point(<point>)` kills the process with SIGKILL.
  Points: snapshot-build:synced|written|renamed|recorded, snapshot-install:moved|installed|
  recorded.
- RAFTKV_TEST_CORRUPT_RECEIVED=<n>: the first n snapshots received get one byte flipped in the
  middle before they are verified.
- RAFTKV_TEST_UNDECODABLE=<text>: a committed entry whose data contains <text> (e.g. a key)
  cannot be applied on this node, as if it held a command kind this version does not know
  (tag 99): the node halts there (runtime/halt.py). Restarted without the variable, it applies
  the entry: an "upgraded" binary.
- RAFTKV_TEST_LINGER_AFTER_FAILURE_MS=<ms>: after a failure (a storage failure, a broken
  invariant) `raftkv serve` waits that long before it closes its listener and exits, so a
  test can show what a failed node answers meanwhile (cli/serve.py; normally it closes at once).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from pathlib import Path

import structlog

from raftkv.raft.types import Entry
from raftkv.storage.errors import UndecodableEntryError

log = structlog.get_logger("raftkv.runtime")

CRASH_ENV = "RAFTKV_TEST_CRASH_AT"
CORRUPT_ENV = "RAFTKV_TEST_CORRUPT_RECEIVED"
_crash_at = os.environ.get(CRASH_ENV, "")
_corrupt_left = int(os.environ.get(CORRUPT_ENV, "0") or 0)
UNDECODABLE_ENV = "RAFTKV_TEST_UNDECODABLE"
undecodable_marker = os.environ.get(UNDECODABLE_ENV, "").encode()
LINGER_ENV = "RAFTKV_TEST_LINGER_AFTER_FAILURE_MS"
_linger_ms = int(os.environ.get(LINGER_ENV, "0") or 0)


def failure_linger_s() -> float:
    """How long a failed node waits before it stops (0 outside tests)."""
    return max(0, _linger_ms) / 1000


def crash_point(name: str) -> None:
    if _crash_at and _crash_at == name:
        log.warning("test hook: killing the process", point=name)
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_corrupt_received(path: Path) -> None:
    global _corrupt_left
    if _corrupt_left <= 0:
        return
    _corrupt_left -= 1
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    log.warning("test hook: flipped a byte of a received snapshot", path=str(path))


def check_undecodable(entries: Sequence[Entry], applied: int) -> None:
    """Raise for the first entry above `applied` holding the marker (callers test
    `undecodable_marker` first, so this costs nothing outside tests)."""
    for e in entries:
        if e.index > applied and undecodable_marker in e.data:
            raise UndecodableEntryError(e.index, 99, "unknown command kind tag 99 (test hook)")
