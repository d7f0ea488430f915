"""The write-forwarding part of `PeerTransport` (a mixin, like raft/election.py's): sending
`ForwardBatch` / `ForwardReplies` frames (`codec/forward.py`) and handing received ones on.

Rules:
- `send_forward` writes a frame at once, behind what is queued for that peer, only while our
  connection to the peer is up and -- for a batch -- the peer's LIVE inbound connection
  announced forwarding (`forwarding_version`); it says whether the frame went to the socket.
- Received forward frames go to the handler of `set_forward_handlers`, and so does every end
  of a live link in either direction (`on_link_down`). Up to _MAX_EARLY_BATCHES batches that
  arrive before the first handler is set (we announce forwarding from the start; the server
  installs its handler a moment later) wait for it; once a handler was set and removed
  (stopping), frames are dropped (the inbound side logs it).
- Coalescing (issue 12): `queue_forward` puts a frame behind the Raft messages queued for the
  same peer, so they leave in ONE write at the end of the turn; `before_flush(hook)` runs
  `hook` at the start of that flush (scheduling one if none is), so what a turn produced up to
  then -- e.g. the replies finished while the commit notices wait -- joins the same write. The
  frame is encoded when queued (an unencodable one is refused there, never inside the flush);
  a queued frame is dropped only with the Raft messages beside it (link down, buffer full),
  which its receiver sees as a lost link or a deadline, as for a written frame.
- Only the members declared under TYPE_CHECKING are used from the transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from raftkv.codec.forward import ForwardBatch, ForwardReplies
from raftkv.codec.wire import append_frame
from raftkv.raft.types import NodeId

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from raftkv.transport._inbound import InboundSide
    from raftkv.transport._outbound import OutboundPeer

_MAX_EARLY_BATCHES: Final = 64


class ForwardingSide:
    """A mixin of `PeerTransport` (tcp.py)."""

    if TYPE_CHECKING:
        _running: bool
        _peers: dict[NodeId, OutboundPeer]
        _dirty: dict[NodeId, OutboundPeer]
        _in: InboundSide
        _max_frame_bytes: int
        _flush_handle: asyncio.Handle | None
        _log: FilteringBoundLogger

        def _call_soon(self, callback: Callable[..., None], *args: Any) -> None: ...
        def _flush(self) -> None: ...

    def _init_forwarding(self) -> None:
        self._forward_handler: Callable[[NodeId, ForwardBatch | ForwardReplies], None] | None
        self._forward_handler = None
        self._link_down_handler: Callable[[NodeId], None] | None = None
        # Batches received before the first set_forward_handlers, and whether it happened.
        self._early_batches: list[tuple[NodeId, ForwardBatch]] = []
        self._forwarding_started = False
        self._before_flush: list[Callable[[], None]] = []  # run at the start of the next flush

    def set_forward_handlers(
        self,
        on_forward: Callable[[NodeId, ForwardBatch | ForwardReplies], None] | None,
        on_link_down: Callable[[NodeId], None] | None,
    ) -> None:
        """Where inbound forward frames and link ends go (None: frames are dropped, logged).
        Batches that arrived before the first handler was set (we announce forwarding from the
        start, the server installs its handler a moment later) are handed to it now."""
        self._forward_handler = on_forward
        self._link_down_handler = on_link_down
        early, self._early_batches = self._early_batches, []
        self._forwarding_started = True
        if on_forward is not None:
            for peer, frame in early:
                self._call_soon(on_forward, peer, frame)

    @property
    def max_frame_bytes(self) -> int:
        """The largest frame payload a peer accepts from us (the same limit as ours)."""
        return self._max_frame_bytes

    def forwarding_version(self, peer: NodeId) -> int:
        """The forwarding version `peer` announced on its live connection to us (0: none, or
        not connected)."""
        return self._in.features.get(peer, 0)

    def send_forward(self, to: NodeId, frame: ForwardBatch | ForwardReplies) -> bool:
        """Write `frame` to `to` now (behind anything queued for it). False: nothing was handed
        to the socket (not running, `to` not connected, a batch to a peer that did not
        announce forwarding, over the frame limit or not encodable, or the write buffer full)."""
        target = self._encoded_for(to, frame)
        if target is None:
            return False
        peer, buf = target
        self._dirty.pop(to, None)
        return peer.flush(raw=bytes(buf))

    def queue_forward(self, to: NodeId, frame: ForwardBatch | ForwardReplies) -> bool:
        """Queue `frame` for `to` behind this turn's Raft messages to it (one write at the end
        of the turn). False as for `send_forward`."""
        target = self._encoded_for(to, frame)
        if target is None:
            return False
        peer, buf = target
        peer.pending_raw += buf
        self._dirty[to] = peer
        self._schedule_flush()
        return True

    def _encoded_for(
        self, to: NodeId, frame: ForwardBatch | ForwardReplies
    ) -> tuple[OutboundPeer, bytearray] | None:
        """The connected peer `frame` may go to, and the frame encoded; None if it may not."""
        peer = self._peers.get(to)
        if not self._running or peer is None or not peer.connected:
            return None
        if isinstance(frame, ForwardBatch) and self.forwarding_version(to) < 1:
            return None
        buf = bytearray()
        try:
            if append_frame(buf, frame) > self._max_frame_bytes:
                return None
        except Exception:  # e.g. a string msgpack cannot carry: nothing is sent
            return None
        return peer, buf

    def before_flush(self, hook: Callable[[], None]) -> None:
        """Run `hook` at the start of this turn's flush (scheduled now if none is)."""
        self._before_flush.append(hook)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and self._running:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _run_before_flush(self) -> None:
        hooks, self._before_flush = self._before_flush, []
        for hook in hooks:
            try:
                hook()
            except Exception:  # the Raft messages of the turn still go out
                self._log.exception("before_flush_hook_failed")

    def _take_forward(self, peer: NodeId, frame: ForwardBatch | ForwardReplies) -> bool:
        handler = self._forward_handler
        if handler is None:
            # Before the server installed its handler: keep a few batches for it (their senders
            # wait for the replies). After it removed it (stopping): drop, as a stopped node.
            early = self._early_batches
            if self._forwarding_started or not isinstance(frame, ForwardBatch):
                return False
            if len(early) >= _MAX_EARLY_BATCHES:
                return False
            early.append((peer, frame))
            return True
        handler(peer, frame)
        return True

    def _link_down(self, peer: NodeId) -> None:
        handler = self._link_down_handler
        if handler is not None:
            handler(peer)
