"""The node's side of the snapshot builder process (storage/snapshot_builder.py).

Rules:
- One builder per node, started in the background when the node starts (`prestart`, on the
  state-machine worker; a build starts it if that failed) and kept: a Python start with its
  imports costs ~0.1 s of CPU and 0.3-0.5 s of wall time, paid once, not per snapshot (started
  lazily, the first snapshot captured a later index than the one that asked for it).
- Everything here runs on the state-machine worker thread, never on the loop: spawning a
  process (fork) and the build's request/reply are blocking calls. While the builder builds,
  that thread waits in `read()` on a pipe, which does not hold the GIL; the loop runs on.
  `stop()` kills the builder first (`kill`: a build in progress reads EOF and fails into a
  task already cancelled, leaving only its `*.tmp`, which recovery removes), then drains that
  worker: a stopped or stuck builder must not hold up the node's stop.
- The builder's parent is that worker thread (PR_SET_PDEATHSIG fires when the thread that
  spawned it ends): the worker lives as long as the node, and `close()` runs after it drained.
- One build at a time (a lock; the driver also never starts two).
- Any failure is a storage failure (storage/failure.py), as a failed build on a thread was:
  the builder's reported error keeps its errno (an injected EIO reads as EIO), and a builder
  that died (killed, crashed) during a build is named with its pid and exit status; one that
  died while idle was asked nothing and is replaced (a warning), not a storage failure. The
  caller stops the node; a killed builder left at most a `*.tmp` file, never a file under the
  final name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import structlog

from raftkv.raft.types import Index, Term
from raftkv.storage.errors import StorageError
from raftkv.storage.failure import StorageFailure
from raftkv.storage.snapshot_builder import BuildRequest, reply_codec, request_codec
from raftkv.storage.snapshot_file import SnapshotInfo

log = structlog.get_logger("raftkv.runtime")

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
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def prestart(self) -> None:
        """Start the builder ahead of the first build; a failure to start is reported by
        that build (it tries again), not here."""
        with self._lock, contextlib.suppress(OSError):
            if self._proc is None:
                self._start()

    def build(self, dest: Path) -> SnapshotInfo:
        """Have the builder write a snapshot of the state to `dest`; StorageFailure if not."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is not None:
                # It died while idle (killed, OOM): nothing was asked of it, so nothing was
                # lost and the disk is not to blame. A fresh one builds; a death during a
                # build (below) is a storage failure.
                log.warning(
                    "the idle snapshot builder had ended; starting a new one",
                    pid=proc.pid,
                    status=proc.returncode,
                )
                self._close_pipes(proc)
                proc = self._proc = None
            try:
                proc = proc or self._start()
            except OSError as exc:
                raise StorageFailure(OPERATION, dest, exc) from exc
            line = self._ask(proc, dest)
            if not line.endswith(b"\n"):
                self._proc = None
                died = BuilderFailed(exit_text(proc.pid, proc.wait()))
                self._close_pipes(proc)
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

    def _start(self) -> subprocess.Popen[bytes]:
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-P",  # not the node's working directory first on sys.path: no stray lmdb.py
                "-m",
                "raftkv.storage.snapshot_builder",
                str(self._lmdb_dir),
                str(os.getpid()),
                str(self._nice),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        return self._proc

    @staticmethod
    def _ask(proc: subprocess.Popen[bytes], dest: Path) -> bytes:
        """The reply line; b"" (or a line without its end) if the builder went away."""
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(request_codec[0].encode(BuildRequest(str(dest))) + b"\n")
            proc.stdin.flush()
            return proc.stdout.readline()
        except (BrokenPipeError, ConnectionError):
            return b""

    @staticmethod
    def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def kill(self) -> None:
        """The node is stopping: end the builder now, a build in progress too (without the
        lock, which that build holds; its `_ask` then reads EOF). `close` reaps it."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()

    def close(self) -> None:
        """Stop the builder (the node stops, its worker drained): EOF, then SIGKILL if slow."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        self._close_pipes(proc)  # EOF on its requests: it exits
        try:
            proc.wait(_CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
