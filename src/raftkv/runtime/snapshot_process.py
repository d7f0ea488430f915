"""The node's side of the snapshot builder process (storage/snapshot_builder.py).

Rules:
- One builder per node, started at the first build and kept (a Python start with its imports
  costs ~0.1 s of CPU: paid once, not per snapshot); `close()` ends it when the node stops.
- The loop awaits the builder's reply on a pipe: no thread, no GIL held while it builds.
- One build at a time (a lock; the driver also never starts two).
- Any failure is a storage failure (storage/failure.py), as a failed build on a thread was:
  the builder's reported error keeps its errno (an injected EIO reads as EIO), and a builder
  that died (killed, crashed) is named with its pid and exit status. The caller stops the node;
  a killed builder left at most a `*.tmp` file, never a file under the final name.
- `close()` of a busy builder kills it (its half-written `*.tmp` is removed at the next start);
  an idle one gets EOF and exits by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from raftkv.raft.types import Index, Term
from raftkv.storage.errors import StorageError
from raftkv.storage.failure import StorageFailure
from raftkv.storage.snapshot_builder import BuildRequest, reply_codec, request_codec
from raftkv.storage.snapshot_file import SnapshotInfo

BUILDER_NICE = 10  # the builder's CPU priority below the node's (never above)
OPERATION = "snapshot build"
_CLOSE_WAIT_S = 2.0


class BuilderFailed(StorageError):
    """The builder reported an error without an errno, or ended while the node waited."""


def exit_text(pid: int, code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"was killed by {name}"
    else:
        how = f"exited with code {code}"
    return f"the snapshot builder process {pid} {how} before it replied"


class SnapshotBuilder:
    def __init__(self, lmdb_dir: Path, nice: int = BUILDER_NICE) -> None:
        self._lmdb_dir = lmdb_dir
        self._nice = nice
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def build(self, dest: Path) -> SnapshotInfo:
        """Have the builder write a snapshot of the state to `dest`; StorageFailure if not."""
        async with self._lock:
            try:
                proc = self._proc or await self._start()
            except OSError as exc:
                raise StorageFailure(OPERATION, dest, exc) from exc
            try:
                line = await self._ask(proc, dest)
            except BaseException:
                # Cancelled (the node stops): its reply would answer the next request. Kill it.
                self._proc = None
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                raise
            if not line.endswith(b"\n"):
                self._proc = None
                died = BuilderFailed(exit_text(proc.pid, await proc.wait()))
                raise StorageFailure(OPERATION, dest, died)
        reply = reply_codec[1].decode(line)
        if not reply.ok:
            cause = (
                OSError(reply.errno, os.strerror(reply.errno))
                if reply.errno
                else BuilderFailed(f"the snapshot builder failed: {reply.error}")
            )
            raise StorageFailure(OPERATION, dest, cause)
        return SnapshotInfo(Index(reply.index), Term(reply.term), reply.conf, dest, reply.size)

    async def _start(self) -> asyncio.subprocess.Process:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "raftkv.storage.snapshot_builder",
            str(self._lmdb_dir),
            str(os.getpid()),
            str(self._nice),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return self._proc

    @staticmethod
    async def _ask(proc: asyncio.subprocess.Process, dest: Path) -> bytes:
        """The reply line; b"" (or a line without its end) if the builder went away."""
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(request_codec[0].encode(BuildRequest(str(dest))) + b"\n")
            await proc.stdin.drain()
            return await proc.stdout.readline()
        except ConnectionError:
            return b""

    async def close(self) -> None:
        """Stop the builder (the node stops): EOF when idle, SIGKILL when busy or slow."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        if self._lock.locked():
            proc.kill()  # mid-build: its *.tmp file is removed at the next start
        elif proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), _CLOSE_WAIT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
