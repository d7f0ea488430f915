"""The snapshot builder: a process of its own that writes the node's snapshot files.

Why a process: a build walks the whole state in Python (~0.5 µs per record). On a thread of
the node it holds the node's GIL for most of that, and on a box with fewer cores than busy
threads the OS preempts it while it holds the GIL: the event loop (heartbeats, requests) then
waits for a thread that is not even running (issue 12: 20-80 ms loop stalls on all three nodes
while they built the same snapshot). A process has its own interpreter; the node awaits a
pipe, and its GIL stays free.

Rules:
- Started by the node (runtime/snapshot_process.py) as
  `python -m raftkv.storage.snapshot_builder LMDB_DIR PARENT_PID NICE`, one per node, kept for
  the node's life. It dies with the node: PR_SET_PDEATHSIG (SIGKILL) is set before it opens
  anything, and it exits at once if the parent is already gone, so a crashed node never leaves
  a builder writing into its data directory.
- It opens the node's LMDB environment read-only WITH LMDB's lock file: its read transaction
  registers in the reader table, so the node's writer never reuses a page it is reading.
  One read transaction per build: the header (applied index and term, conf, membership
  record) and every record come from it (state_lmdb.snapshot_of), one consistent instant.
- One request, one reply: a JSON line each on stdin / stdout (`BuildRequest`, `BuildReply`).
  EOF on stdin: exit 0.
- The file is written as every snapshot is (snapshot_file.write_snapshot_file: `<dest>.tmp`,
  fdatasync every 8 MiB, fsync, rename to `dest`, directory fsync), so a builder killed
  mid-write leaves only a `*.tmp` file, which recovery removes at the next start.
- An error is never retried: the reply carries it (errno, text) and the node makes it a
  storage failure (storage/failure.py: it stops). Nothing goes to stderr for an error the
  reply carries (the node logs the one line); stderr is the node's, for crashes only.
- It lowers its own CPU priority (`os.nice(NICE)`, NICE >= 0: never raised), so that where
  the cores are oversubscribed the nodes' event loops run first.
- Test hook: RAFTKV_TEST_BUILDER_PAUSE=<path>:<n> makes a build, after n records, write its
  pid to `<path>.paused` and wait until `<path>.go` exists, at most PAUSE_MAX_S (a test applies
  writes, or kills the builder, meanwhile).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import lmdb
import msgspec

from raftkv.raft.types import ConfState
from raftkv.storage.mvcc_lmdb import Dbs, open_dbs
from raftkv.storage.state_lmdb import DEFAULT_MAP_SIZE, snapshot_of

PAUSE_ENV = "RAFTKV_TEST_BUILDER_PAUSE"
PAUSE_MAX_S = 60.0
_PR_SET_PDEATHSIG = 1

Records = Iterator[tuple[bytes, bytes]]


class BuildRequest(msgspec.Struct, frozen=True):
    dest: str  # the snapshot file to write (atomically)


class BuildReply(msgspec.Struct, frozen=True):
    ok: bool
    index: int = 0
    term: int = 0
    conf: ConfState = ConfState()
    size: int = 0
    errno: int = 0  # of the OSError that failed the build (0: none, or not an OSError)
    error: str = ""  # the failure's text


request_codec = (msgspec.json.Encoder(), msgspec.json.Decoder(BuildRequest))
reply_codec = (msgspec.json.Encoder(), msgspec.json.Decoder(BuildReply))


def _die_with_parent(parent: int) -> None:
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(0)


def _pause_after(n: int, path: str) -> Callable[[Records], Records]:
    def wrap(records: Records) -> Records:
        for i, rec in enumerate(records):
            if i == n:
                Path(path + ".paused").write_text(str(os.getpid()))
                give_up = time.monotonic() + PAUSE_MAX_S  # a failed test never leaves it here
                while not os.path.exists(path + ".go") and time.monotonic() < give_up:
                    time.sleep(0.01)  # test hook only: polled, nothing to await in here
            yield rec

    return wrap


def _hook() -> Callable[[Records], Records] | None:
    spec = os.environ.get(PAUSE_ENV, "")
    if not spec:
        return None
    path, _, n = spec.rpartition(":")
    return _pause_after(int(n), path)


def build(env_dir: str, state: list[tuple[lmdb.Environment, Dbs]], dest: Path) -> BuildReply:
    """One build; any error comes back in the reply. `state` caches the opened environment."""
    try:
        if not state:
            env = lmdb.open(
                env_dir, readonly=True, lock=True, max_dbs=5, subdir=True, map_size=DEFAULT_MAP_SIZE
            )
            state.append((env, open_dbs(env, env.open_db(b"meta", create=False))))
        env, dbs = state[0]
        with env.begin() as txn:  # ONE read transaction: the file is one instant
            info = snapshot_of(txn, dbs, dest, _hook())
    except Exception as exc:
        code = exc.errno if isinstance(exc, OSError) and exc.errno is not None else 0
        return BuildReply(False, errno=code, error=str(exc) or type(exc).__name__)
    return BuildReply(True, info.index, info.term, info.conf, info.size)


def serve(env_dir: str, requests: BinaryIO, replies: BinaryIO) -> None:
    """Answer build requests until EOF."""
    state: list[tuple[lmdb.Environment, Dbs]] = []
    encode = reply_codec[0].encode
    decode = request_codec[1].decode
    for line in requests:
        reply = build(env_dir, state, Path(decode(line).dest))
        replies.write(encode(reply) + b"\n")
        replies.flush()


def main(argv: list[str]) -> None:
    env_dir, parent, nice = argv[0], int(argv[1]), int(argv[2])
    _die_with_parent(parent)
    os.nice(max(0, nice))  # lower only (module rules)
    serve(env_dir, sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main(sys.argv[1:])
