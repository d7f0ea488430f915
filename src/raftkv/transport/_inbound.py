"""Inbound peer connections: admission, handshake, validation, and what each frame does.

Rules:
- Admission at accept: at most `max_handshaking` connections may be in their handshake at
  once; more are closed at once (logged, rate-limited). A handshake (TLS when configured, then
  the Hello, `_handshake.check_hello`) must finish within `hello_timeout`.
- One live connection per peer id. A Hello NEVER displaces a live connection for its id (that
  would let anyone who can reach the port cut a member off): it is refused. A restarted peer's
  old connection closes on its own when its process dies (FIN/RST); a half-open one (the peer's
  host died) is dropped after `idle_timeout` of silence (`drop_idle`), after which the new one
  is admitted. Outbound connections send `Ping` frames when idle, so live ones are never
  silent that long.
- Each connection is an asyncio Protocol (`_inbound_conn.py`): frames are split and stepped in
  `data_received`, in order, with no reader task in between (issue 12: one loop turn less per
  received batch on each side of a write's round trip). Frames that need file I/O (snapshot
  chunks and the InstallSnapshot completing them, file mode) pause reading until done.
- Every frame after the Hello is type-checked (`codec.wire`), value-checked
  (`codec.validate.check_message`), and must come from the connection's peer (`from_`) to us
  (`to`) BEFORE it reaches `on_message`. Anything wrong drops the connection, logged.
- Forward frames (`codec/forward.py`) go to `on_forward` with the connection's peer id (they
  carry no sender of their own: the connection is the sender). A `ForwardBatch` from a peer we
  did not announce forwarding to is a protocol violation (dropped connection); one that arrives
  while no handler is installed (`on_forward` returns False) is dropped and logged.
- `features[peer]` is the forwarding version the peer announced on its LIVE connection (cleared
  when it closes, so a peer restarted as an older version is never assumed to know more), and
  `on_peer_down(peer)` is called when a live connection of a peer ends (replies to forwarded
  requests may have been lost with it).
- Nothing a peer sends can raise out of a protocol callback; an exception from `on_message` is
  logged. Every refusal is logged once with its reason (`inbound_refused`, `inbound_dropped_*`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from raftkv.codec.forward import ForwardBatch, ForwardReplies
from raftkv.codec.validate import check_message
from raftkv.codec.wire import Hello, Ping, SnapshotChunk, SnapshotRejected, WireMessage
from raftkv.raft.messages import AnyMessage, InstallSnapshot
from raftkv.raft.types import NodeId
from raftkv.transport._common import PeerRefused, ProtocolViolation, TransportTuning
from raftkv.transport._handshake import check_hello
from raftkv.transport._inbound_conn import InboundConnection
from raftkv.transport._snapshot import SnapshotReceiver
from raftkv.transport.tls import PeerTls, describe_tls_error, node_ids_of


@dataclass(slots=True)
class _Live:
    transport: asyncio.Transport
    remote: tuple[str, int]
    last_seen: float  # loop time of the last bytes received


class InboundSide:
    """The accepting half of `PeerTransport` (which owns it; `connection` is its protocol
    factory, `handle_tls` takes a TLS connection's accepted socket)."""

    def __init__(
        self,
        *,
        node_id: NodeId,
        cluster_name: str,
        is_member: Callable[[NodeId], bool],
        on_message: Callable[[AnyMessage], None],
        on_peer_up: Callable[[NodeId], None],
        on_peer_down: Callable[[NodeId], None],
        on_forward: Callable[[NodeId, ForwardBatch | ForwardReplies], bool],
        forwarding: int,
        on_snapshot_rejected: Callable[[NodeId, SnapshotRejected], None],
        snapshot_dir: Path | None,
        max_frame_bytes: int,
        tuning: TransportTuning,
        tls: PeerTls | None,
        logger: FilteringBoundLogger,
    ) -> None:
        self._node_id = node_id
        self._cluster_name = cluster_name
        self._is_member = is_member
        self._on_message = on_message
        self._on_peer_up = on_peer_up
        self._on_peer_down = on_peer_down
        self._on_forward = on_forward
        self._forwarding = forwarding  # the forwarding version we announce (0: none)
        self._on_snapshot_rejected = on_snapshot_rejected
        self._snapshot_dir = snapshot_dir
        self.max_frame_bytes = max_frame_bytes
        self.tuning = tuning
        self._tls = tls
        self.log = logger
        self.running = False
        self.live: dict[NodeId, _Live] = {}
        self.versions: dict[NodeId, tuple[int, int]] = {}  # (format, command set) per peer
        self.features: dict[NodeId, int] = {}  # forwarding version per LIVE peer connection
        self.conns: set[InboundConnection] = set()  # open, or finishing their file I/O
        self.handshaking = 0  # connections admitted and not past their Hello yet
        self._last_overload_log = -1e9

    def addresses(self) -> dict[NodeId, tuple[str, int]]:
        return {peer: live.remote for peer, live in self.live.items()}

    def drop_peer(self, peer_id: NodeId) -> None:
        """Close the connection of a peer that is no longer a member."""
        live = self.live.get(peer_id)
        if live is not None:
            self.log.info("inbound_closed_not_member", peer=peer_id)
            live.transport.abort()

    def drop_non_members(self) -> None:
        for peer_id in list(self.live):
            if not self._is_member(peer_id):
                self.drop_peer(peer_id)

    def drop_idle(self, now: float, *, restart_clocks: bool = False) -> None:
        """Abort connections silent for longer than `idle_timeout` (half-open); with
        `restart_clocks` (our own loop just stalled) count their silence from now instead."""
        limit = self.tuning.idle_timeout
        if restart_clocks:
            for live in self.live.values():
                live.last_seen = max(live.last_seen, now)
            return
        for peer_id, live in list(self.live.items()):
            if now - live.last_seen > limit:
                self.log.warning("inbound_dropped_idle", peer=peer_id, idle_timeout=limit)
                live.transport.abort()

    def abort_all(self) -> None:
        for conn in list(self.conns):
            conn.abort()

    async def wait_closed(self) -> None:
        """Until every connection has ended and finished its file I/O (after `abort_all`)."""
        while self.conns:
            await asyncio.gather(*(conn.finished for conn in self.conns))

    # ---- admission and handshake -----------------------------------------------------------

    def connection(self) -> InboundConnection:
        """The protocol factory of the plain-TCP listener."""
        return InboundConnection(self, counted=False)

    async def handle_tls(self, conn: socket.socket) -> None:
        """TLS mode: complete the TLS handshake on an accepted socket; the protocol then takes
        the connection (and its place among the connections in their handshake)."""
        try:
            peer = conn.getpeername()
        except OSError:  # gone before we looked
            conn.close()
            return
        remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        if not self.running or self._tls is None or not self.admit(remote):
            conn.close()
            return
        loop = asyncio.get_running_loop()
        protocol = InboundConnection(self, counted=True)
        try:
            async with asyncio.timeout(self.tuning.hello_timeout):
                await loop.connect_accepted_socket(lambda: protocol, conn, ssl=self._tls.server)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            reason = (
                "no TLS handshake within hello_timeout"
                if isinstance(exc, TimeoutError)
                else describe_tls_error(exc)
            )
            self.log.warning("inbound_refused", remote=remote, reason=reason)
            conn.close()
        finally:
            protocol.handed_over()  # the count is the protocol's now, or dropped

    def admit(self, remote: str) -> bool:
        """Count one more connection in its handshake, unless there are too many."""
        if self.handshaking >= self.tuning.max_handshaking:
            loop = asyncio.get_running_loop()
            if loop.time() - self._last_overload_log >= 1.0:
                self._last_overload_log = loop.time()
                self.log.warning(
                    "inbound_refused",
                    remote=remote,
                    reason="too many connections in their handshake",
                )
            return False
        self.handshaking += 1
        return True

    def hello(self, first: WireMessage, transport: asyncio.BaseTransport) -> Hello:
        """The connection's first frame, checked (`_handshake.check_hello`)."""
        cert_ids: list[str] | None = None
        if self._tls is not None:  # verified against the CA by the TLS handshake already
            cert_ids = node_ids_of(transport.get_extra_info("peercert"))
        return check_hello(
            first,
            cluster_name=self._cluster_name,
            own_id=self._node_id,
            is_member=self._is_member,
            cert_node_ids=cert_ids,
        )

    def register(
        self, hello: Hello, transport: asyncio.Transport, remote: tuple[str, int]
    ) -> _Live:
        """Make the connection `hello` opened the live one of its peer (or refuse it)."""
        peer_id = hello.node_id
        old = self.live.get(peer_id)
        if old is not None and not old.transport.is_closing():
            raise PeerRefused(f"node {peer_id!r} already has a live connection")
        live = _Live(transport, remote, asyncio.get_running_loop().time())
        self.live[peer_id] = live
        # What the peer understands, for the leader's feature gate (runtime/features.py).
        self.versions[peer_id] = (hello.format_version, hello.command_set)
        self.features[peer_id] = hello.forwarding
        return live

    def peer_up(self, peer_id: NodeId, log: FilteringBoundLogger) -> SnapshotReceiver | None:
        """After `register`: tell the transport, and the receiver of the peer's snapshots."""
        self._on_peer_up(peer_id)
        if self._snapshot_dir is None:
            return None
        return SnapshotReceiver(
            self._snapshot_dir, peer_id, log, free_reserve=self.tuning.snapshot_free_reserve_bytes
        )

    def release(self, peer_id: NodeId, live: _Live, log: FilteringBoundLogger) -> None:
        """A registered connection ended: forget it if it is still the peer's live one."""
        if self.live.get(peer_id) is live:
            del self.live[peer_id]
            self.features.pop(peer_id, None)
            try:
                self._on_peer_down(peer_id)
            except Exception:
                log.exception("on_peer_down_failed")

    # ---- frames ----------------------------------------------------------------------------

    def dispatch(
        self, msg: WireMessage, peer_id: NodeId, receiver: SnapshotReceiver | None
    ) -> bool:
        """Check and deliver one frame; False (nothing done) when it needs file I/O, which
        `dispatch_io` does. Raises FrameError / ProtocolViolation: drop the connection."""
        if receiver is not None and isinstance(msg, SnapshotChunk | InstallSnapshot):
            return False
        check_message(msg, max_snapshot_bytes=self.tuning.max_snapshot_bytes)
        match msg:
            case Ping():
                return True
            case SnapshotChunk():
                raise ProtocolViolation("snapshot chunk, but snapshots travel inline here")
            case SnapshotRejected():
                try:  # it concerns the connection's own peer: nothing else to check
                    self._on_snapshot_rejected(peer_id, msg)
                except Exception:
                    self.log.exception("on_snapshot_rejected_failed")
                return True
            case Hello():
                raise ProtocolViolation("second Hello on a connection")
            case ForwardBatch() | ForwardReplies():
                self._forward(msg, peer_id)
                return True
            case _:
                pass
        self._deliver(msg, peer_id)
        return True

    async def dispatch_io(
        self, msg: WireMessage, peer_id: NodeId, receiver: SnapshotReceiver
    ) -> None:
        """A snapshot chunk (written to its file) or the InstallSnapshot completing one."""
        check_message(msg, max_snapshot_bytes=self.tuning.max_snapshot_bytes)
        if isinstance(msg, SnapshotChunk):
            await receiver.add_chunk(msg)
        elif isinstance(msg, InstallSnapshot):
            self._check_addressing(msg, peer_id)
            self._deliver(await receiver.complete(msg), peer_id)

    def _forward(self, msg: ForwardBatch | ForwardReplies, peer_id: NodeId) -> None:
        if isinstance(msg, ForwardBatch) and self._forwarding < 1:
            raise ProtocolViolation("ForwardBatch, but we did not announce forwarding")
        try:
            taken = self._on_forward(peer_id, msg)
        except Exception:
            self.log.exception("on_forward_failed", msg_type=type(msg).__name__)
            return
        if not taken:
            self.log.warning("forward_frame_dropped_no_handler", peer=peer_id)

    def _check_addressing(self, msg: AnyMessage, peer_id: NodeId) -> None:
        if msg.from_ != peer_id:
            raise ProtocolViolation(f"{type(msg).__name__} from {msg.from_!r} on {peer_id}'s link")
        if msg.to != self._node_id:
            raise ProtocolViolation(f"{type(msg).__name__} addressed to {msg.to!r}")

    def _deliver(self, msg: AnyMessage, peer_id: NodeId) -> None:
        self._check_addressing(msg, peer_id)
        try:
            self._on_message(msg)
        except Exception:
            self.log.exception("on_message_failed", msg_type=type(msg).__name__)
