"""The channel between a node and its read workers (`server.read_workers`): messages and framing.

Rules:
- One `AF_UNIX` `SOCK_SEQPACKET` socket pair per worker: one datagram is one message (no
  length prefix of ours), and a client connection travels as an `SCM_RIGHTS` file descriptor
  attached to the message that carries its unanswered bytes (`Conn`, `Back`).
- Messages are msgspec Structs (msgpack, tagged union; never pickle). Each side validates what it
  receives: an undecodable message, or a connection message with no descriptor or more than
  one, is a broken channel — the receiver closes it (a worker exits; the node restarts it).
- Sends never block the loop: the socket is non-blocking; what does not fit waits in a queue
  drained when the socket is writable, in order (a message with a descriptor keeps the
  descriptor open until it is sent). `send_conn` is the exception: it is used only when the
  queue is empty and fails rather than queues, so the caller can keep serving the connection.
- Read-fence protocol: a worker asks `Fence` for a batch of reads that arrived before the
  message was sent; the node answers `Fenced` for each id once its own applied index covers
  the fence (ReadIndex, `min_revision`, lease), with that applied index, or refuses it (the
  worker then hands the connection back, and the node serves the request as it always did).
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import errno
import os
import socket
from collections.abc import Callable
from typing import Final

import msgspec

MAX_MESSAGE: Final = 1 << 20  # largest datagram either side sends or accepts
FENCE_OK: Final = 0
FENCE_REFUSED: Final = 1


class Init(msgspec.Struct, tag="init", array_like=True):
    """Node -> worker, first message: what the worker needs to serve GET /kv/{key}."""

    lmdb_path: str
    map_size: int
    request_timeout_ms: int
    keepalive_timeout_ms: int
    body_timeout_ms: int
    max_value_bytes: int
    max_line_bytes: int
    max_field_bytes: int
    metrics: bool
    log_level: str
    log_format: str
    node_id: str


class Conn(msgspec.Struct, tag="conn", array_like=True):
    """Node -> worker: a client connection (the descriptor) and its unanswered bytes."""

    data: bytes


class Back(msgspec.Struct, tag="back", array_like=True):
    """Worker -> node: a connection handed back, with its unanswered bytes."""

    data: bytes


class Fence(msgspec.Struct, tag="fence", array_like=True):
    """Worker -> node: read fences wanted: (id, linearizable, min_revision, lease) each."""

    reads: list[tuple[int, bool, int, bool]]


class Fenced(msgspec.Struct, tag="fenced", array_like=True):
    """Node -> worker: (id, FENCE_OK or FENCE_REFUSED, the node's applied index) each."""

    reads: list[tuple[int, int, int]]


class Serving(msgspec.Struct, tag="serving", array_like=True):
    """Node -> worker: may stale reads be served from local state (False: the node halted,
    failed or stopped; read_workers.py)."""

    on: bool


class Stats(msgspec.Struct, tag="stats", array_like=True):
    """Worker -> node: requests served since the last Stats ((status, seconds) each, for the
    node's /metrics) and how many connections it has closed or handed back in all (for
    `server.max_connections`)."""

    served: list[tuple[int, float]]
    closed: int


class Ready(msgspec.Struct, tag="ready", array_like=True):
    """Worker -> node: set up (state open, serving): connections may come."""


class Stop(msgspec.Struct, tag="stop", array_like=True):
    """Node -> worker: finish what is in progress, hand nothing more, exit."""


Message = Init | Conn | Back | Fence | Fenced | Serving | Stats | Ready | Stop
_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(Message)


class ChannelClosed(Exception):
    """The other side is gone, or sent something that breaks the channel's rules."""


def encode(msg: Message) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes) -> Message:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ChannelClosed(f"undecodable message: {exc}") from None


def pair() -> tuple[socket.socket, socket.socket]:
    """(node end, worker end); the worker end is inheritable, the node end is not."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    return ours, theirs


class Channel:
    """One end of a channel on the running loop; `on_message(msg, fd)` gets every message
    (fd: the attached descriptor of a Conn/Back, else -1), `on_close()` once at the end."""

    def __init__(
        self,
        sock: socket.socket,
        on_message: Callable[[Message, int], None],
        on_close: Callable[[], None],
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._on_message = on_message
        self._on_close = on_close
        self._queue: collections.deque[tuple[bytes, int]] = collections.deque()
        self.closed = False
        self._loop.add_reader(sock.fileno(), self._readable)

    def send(self, msg: Message, fd: int = -1) -> None:
        """Send `msg` (with descriptor `fd`, which the caller keeps owning) in order."""
        if self.closed:
            return
        data = encode(msg)
        if fd >= 0:
            fd = os.dup(fd)  # ours until sent: the caller may close its own now
        if self._queue or not self._try_send(data, fd):
            self._queue.append((data, fd))
            if len(self._queue) == 1:
                self._loop.add_writer(self._sock.fileno(), self._writable)

    def send_conn(self, data: bytes, fd: int) -> bool:
        """Send a Conn at once (False: not sent now; the caller still owns the connection)."""
        if self.closed or self._queue:
            return False
        try:
            return self._sendmsg(encode(Conn(data)), fd)
        except OSError:
            return False

    def _sendmsg(self, data: bytes, fd: int) -> bool:
        try:
            if fd >= 0:
                fds = array.array("i", [fd])
                self._sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            else:
                self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            return False
        return True

    def _try_send(self, data: bytes, fd: int, *, queued: bool = False) -> bool:
        """True: sent, or dropped. `fd` is closed exactly once: here, or (the channel closing
        with it still queued) by `close`."""
        try:
            sent = self._sendmsg(data, fd)
        except OSError as exc:
            if fd >= 0 and (not queued or exc.errno == errno.EMSGSIZE):
                os.close(fd)  # not queued, or popped by `_writable` without closing it
            if exc.errno == errno.EMSGSIZE:
                # One message over the socket's datagram limit (wmem_default, ~208 KiB: a
                # connection handed back with many pipelined requests): that connection is
                # dropped, not the channel and every connection the worker serves.
                return True
            self.close()
            return True  # dropped with the channel
        if sent and fd >= 0:
            os.close(fd)
        return sent

    def _writable(self) -> None:
        while self._queue and not self.closed:
            data, fd = self._queue[0]
            if not self._try_send(data, fd, queued=True):
                return
            if self._queue:
                self._queue.popleft()
        if not self.closed:
            self._loop.remove_writer(self._sock.fileno())

    def _readable(self) -> None:
        for _ in range(64):  # bounded work per loop turn
            try:
                data, anc, _flags, _addr = self._sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4 * 4))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            fds = _fds(anc)
            if not data:
                for fd in fds:
                    os.close(fd)
                self.close()
                return
            try:
                msg = decode(data)
                if isinstance(msg, Conn | Back) != (len(fds) == 1) or len(fds) > 1:
                    raise ChannelClosed("a connection message needs exactly one descriptor")
            except ChannelClosed:
                for fd in fds:
                    os.close(fd)
                self.close()
                return
            self._on_message(msg, fds[0] if fds else -1)
            if self.closed:
                return

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._sock.fileno())
            self._loop.remove_writer(self._sock.fileno())
        for _data, fd in self._queue:
            if fd >= 0:
                os.close(fd)
        self._queue.clear()
        self._sock.close()
        self._on_close()


def _fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds
