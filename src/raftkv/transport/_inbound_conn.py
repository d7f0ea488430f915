"""One accepted peer connection as an asyncio Protocol: the Hello, then frames stepped in
`data_received` (owned by `InboundSide`, `_inbound.py`, whose rules hold here).

Rules:
- No reader task: the bytes of one receive are split into frames and each frame is checked
  and delivered in the same callback, in order (issue 12: a StreamReader task cost one loop
  turn per received batch, twice on a write's critical path: the follower's append, the
  leader's ack). So what one receive brings is stepped before the loop's next turn, where the
  driver's Ready loop then sees all of it.
- The first frame is held to `HELLO_MAX_BYTES` (checked on its length prefix, before its body
  is buffered); only after the Hello is accepted does the parser take frames up to the
  transport's frame limit. Until then the connection counts as "in its handshake" and must
  finish within `hello_timeout`.
- Frames that need file I/O (`InboundSide.dispatch` says which) run in a task; reading is
  paused meanwhile and frames already split wait behind it in `_backlog`, so order is kept and
  nothing is buffered beyond one receive plus one partial frame (the parser's limit). A frame
  arriving while paused (a transport may deliver one more receive) joins the backlog too.
- A connection ends once: a bad frame, a refusal or a timeout logs its one line and aborts
  the transport; `connection_lost` then releases the peer's live slot (`on_peer_down`) and
  discards an unfinished snapshot transfer -- after a running file operation finished, never
  under it. `finished` resolves when both have happened (`InboundSide.wait_closed`).
- Nothing raises out of a callback: every exception is logged and drops the connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import TYPE_CHECKING, cast

from raftkv.codec.wire import FrameError, FrameParser, WireMessage
from raftkv.raft.types import NodeId
from raftkv.transport._common import PeerRefused, ProtocolViolation, set_nodelay
from raftkv.transport._handshake import HELLO_MAX_BYTES
from raftkv.transport.tls import describe_tls_error

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from raftkv.transport._inbound import InboundSide, _Live
    from raftkv.transport._snapshot import SnapshotReceiver


class InboundConnection(asyncio.Protocol):
    """See the module rules."""

    def __init__(self, side: InboundSide, *, counted: bool) -> None:
        self._side = side
        # Counted in side.handshaking by handle_tls already (TLS): the count passes to us.
        self._precounted = counted
        self._counted = False  # this connection holds one of side.handshaking
        self._made = False
        self.transport: asyncio.Transport | None = None
        self._log: FilteringBoundLogger = side.log
        self._parser = FrameParser(HELLO_MAX_BYTES)
        self._peer: NodeId | None = None
        self._live: _Live | None = None
        self._receiver: SnapshotReceiver | None = None
        self._hello_timer: asyncio.TimerHandle | None = None
        self._backlog: deque[WireMessage] | None = None  # frames behind a file operation
        self._io_task: asyncio.Task[None] | None = None
        self._ended = False  # the end was logged (and the transport aborted) already
        self._lost = False
        # Made in the loop's thread (the listener's factory, or handle_tls).
        self._loop = asyncio.get_running_loop()
        self.finished: asyncio.Future[None] = self._loop.create_future()
        self._remote = ("?", 0)

    # ---- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass: no isinstance).
        transport = cast("asyncio.Transport", transport)
        self.transport = transport
        self._made = True
        side = self._side
        peername = transport.get_extra_info("peername")
        remote = (str(peername[0]), int(peername[1])) if peername else ("?", 0)
        self._remote = remote
        self._log = side.log.bind(remote=f"{remote[0]}:{remote[1]}")
        if self._precounted:
            self._precounted = False
            self._counted = True
        if not side.running:
            self._ended = True
            transport.abort()
            return
        if not self._counted:
            if not side.admit(f"{remote[0]}:{remote[1]}"):
                self._ended = True
                transport.abort()
                return
            self._counted = True
        side.conns.add(self)
        set_nodelay(transport)
        self._hello_timer = self._loop.call_later(side.tuning.hello_timeout, self._no_hello)

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return
        try:
            live = self._live
            if live is None:
                self._hello_bytes(data)
                return
            live.last_seen = self._loop.time()
            frames = self._parser.feed(data)
            if frames:
                self._frames(frames)
        except Exception as exc:
            self._end(exc)

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        self._uncount()
        if not self._ended:
            self._ended = True
            if exc is not None:
                error = describe_tls_error(exc) if isinstance(exc, ssl.SSLError) else str(exc)
                self._log.info("inbound_lost", error=error or type(exc).__name__)
            elif self._live is None:
                self._log.info("inbound_lost", error="closed before its Hello")
            else:
                self._log.info("inbound_closed")
        if self._peer is not None and self._live is not None:
            self._side.release(self._peer, self._live, self._log)
        if self._io_task is None:
            self._finish()

    # ---- for InboundSide -------------------------------------------------------------------

    def handed_over(self) -> None:
        """handle_tls is done: a count the protocol never took (no TLS connection) is dropped."""
        if self._precounted:
            self._precounted = False
            self._side.handshaking -= 1

    def abort(self) -> None:
        if self.transport is not None:
            self._ended = True
            self.transport.abort()

    # ---- the handshake ---------------------------------------------------------------------

    def _hello_bytes(self, data: bytes) -> None:
        first = self._parser.feed(data, max_frames=1)
        if not first:
            return
        transport = self.transport
        assert transport is not None
        side = self._side
        hello = side.hello(first[0], transport)
        self._log = self._log.bind(peer=hello.node_id)
        self._live = side.register(hello, transport, self._remote)
        self._peer = hello.node_id
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        self._uncount()
        self._log.info("inbound_connected")
        self._receiver = side.peer_up(hello.node_id, self._log)
        # Frames behind the Hello may be as large as any other peer frame from now on.
        self._parser.max_frame_bytes = side.max_frame_bytes
        frames = self._parser.feed(b"")
        if frames:
            self._frames(frames)

    def _no_hello(self) -> None:
        self._hello_timer = None
        if not self._ended:
            self._log.warning("inbound_dropped_no_hello", timeout=self._side.tuning.hello_timeout)
            self.abort()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._side.handshaking -= 1

    # ---- frames ----------------------------------------------------------------------------

    def _frames(self, frames: list[WireMessage]) -> None:
        backlog = self._backlog
        if backlog is not None:  # behind a file operation: keep the order
            backlog.extend(frames)
            return
        peer, receiver, dispatch = self._peer, self._receiver, self._side.dispatch
        assert peer is not None
        for i, msg in enumerate(frames):
            if dispatch(msg, peer, receiver):
                continue
            assert self.transport is not None and receiver is not None
            self._backlog = deque(frames[i:])
            self.transport.pause_reading()
            self._io_task = self._loop.create_task(
                self._drain(peer, receiver), name=f"raftkv-transport-in-{peer}"
            )
            return

    async def _drain(self, peer: NodeId, receiver: SnapshotReceiver) -> None:
        """Frames from the one needing file I/O on, in order; then reading resumes."""
        backlog = self._backlog
        assert backlog is not None
        side = self._side
        try:
            while backlog and not self._ended:
                msg = backlog.popleft()
                if not side.dispatch(msg, peer, receiver):
                    await side.dispatch_io(msg, peer, receiver)
        except Exception as exc:
            self._end(exc)
        finally:
            self._backlog = None
            self._io_task = None
            if self._lost:
                self._finish()
            elif not self._ended and self.transport is not None:
                self.transport.resume_reading()

    def _end(self, exc: BaseException) -> None:
        """Log why the connection is dropped (once) and abort it."""
        if self._ended:
            return
        log = self._log
        if isinstance(exc, PeerRefused):
            log.warning("inbound_refused", reason=str(exc))
        elif isinstance(exc, FrameError):
            log.warning("inbound_dropped_bad_frame", error=str(exc))
        elif isinstance(exc, ProtocolViolation):
            log.warning("inbound_dropped_protocol_violation", error=str(exc))
        elif isinstance(exc, OSError):  # the snapshot directory, say
            log.info("inbound_lost", error=str(exc) or type(exc).__name__)
        else:  # never let a peer's bytes crash the loop's exception handler
            log.error("inbound_failed", exc_info=exc)
        self.abort()

    def _finish(self) -> None:
        if self._receiver is not None:
            self._receiver.discard()
            self._receiver = None
        self._side.conns.discard(self)
        if not self.finished.done():
            self.finished.set_result(None)
