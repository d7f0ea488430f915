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
- Only the members declared under TYPE_CHECKING are used from the transport.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from raftkv.codec.forward import ForwardBatch, ForwardReplies
from raftkv.codec.wire import append_frame
from raftkv.raft.types import NodeId

if TYPE_CHECKING:
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

        def _call_soon(self, callback: Callable[..., None], *args: Any) -> None: ...

    def _init_forwarding(self) -> None:
        self._forward_handler: Callable[[NodeId, ForwardBatch | ForwardReplies], None] | None
        self._forward_handler = None
        self._link_down_handler: Callable[[NodeId], None] | None = None
        # Batches received before the first set_forward_handlers, and whether it happened.
        self._early_batches: list[tuple[NodeId, ForwardBatch]] = []
        self._forwarding_started = False

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
        announce forwarding, over the frame limit, or the write buffer full)."""
        peer = self._peers.get(to)
        if not self._running or peer is None or not peer.connected:
            return False
        if isinstance(frame, ForwardBatch) and self.forwarding_version(to) < 1:
            return False
        buf = bytearray()
        if append_frame(buf, frame) > self._max_frame_bytes:
            return False
        self._dirty.pop(to, None)
        return peer.flush(raw=bytes(buf))

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
