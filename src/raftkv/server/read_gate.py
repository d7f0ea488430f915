"""The read workers' gate: one shared byte that says the node refuses reads (read_workers.py).

Why: `Serving(False)` (read_channel.py) is sent synchronously on the node's failure path,
before any reply of the failure, but a worker reads it only when its loop gets to the channel.
Until then its `serving` is still on: a stale read taken in the same loop turn, or a fenced read
whose `Fenced` answer left the node just before the failure, would be answered from a state the
node has stopped vouching for, after the node began refusing reads (the node itself refuses it
in `read_fence`/`check_readable`). A message cannot close that; shared memory can.

Rules:
- The node makes the gate (an anonymous `memfd`, one page, mapped by every process) before its
  first worker and passes the descriptor to each worker when it spawns it. The node shuts the
  gate (byte 0 := 1) in its `when_reads_refused` callback, before `Serving(False)`, so before
  any reply of the failure is sent; nothing opens it again (a refusing node never serves reads
  again). A worker maps it read-only.
- A worker checks the gate just before it writes any reply (`FastServer.replies_refused`,
  fast_http.py): shut -> the request goes back to the node unanswered (`HandBack`), which
  answers it with its own error (503 `node_stopping` / `node_halted`).
- What is left: the check and the write are two steps, so a reply whose check passed just
  before the gate shut may still be written just after (the worker preempted between them);
  its read arrived before the failure. A read arriving after the gate shut is never answered
  by a worker, and every reply of the failure leaves the node after it shut.
"""

from __future__ import annotations

import mmap
import os
from typing import Final

SIZE: Final = mmap.PAGESIZE
_SHUT: Final = 1


class ReadGate:
    """One end of the gate: the node's (`create`, writable) or a worker's (`attach`)."""

    def __init__(self, fd: int, view: mmap.mmap) -> None:
        self.fd = fd
        self._view = view

    @classmethod
    def create(cls) -> ReadGate:
        """The node's gate, open (serving); `fd` is passed to the workers (pass_fds)."""
        fd = os.memfd_create("raftkv-read-gate", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, SIZE)
            return cls(fd, mmap.mmap(fd, SIZE))
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, fd: int) -> ReadGate:
        """A worker's view of the node's gate (read-only); `fd` is closed once mapped."""
        try:
            return cls(-1, mmap.mmap(fd, SIZE, prot=mmap.PROT_READ))
        finally:
            os.close(fd)

    def shut(self) -> None:
        """The node refuses reads from now on (the node's end only). A no-op once closed: the
        node may stop after its workers did."""
        if not self._view.closed:
            self._view[0] = _SHUT

    def is_shut(self) -> bool:
        return self._view.closed or self._view[0] == _SHUT

    def close(self) -> None:
        self._view.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
