"""Inbound peer connections: admission, handshake, validation, and the receive loop.

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
- Nothing a peer sends can raise out of a handler task; an exception from `on_message` is
  logged. Every refusal is logged once with its reason (`inbound_refused`, `inbound_dropped_*`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from structlog.typing import FilteringBoundLogger

from raftkv.codec.forward import ForwardBatch, ForwardReplies
from raftkv.codec.validate import check_message
from raftkv.codec.wire import (
    FrameError,
    FrameParser,
    Hello,
    Ping,
    SnapshotChunk,
    SnapshotRejected,
    WireMessage,
)
from raftkv.raft.messages import AnyMessage, InstallSnapshot
from raftkv.raft.types import NodeId
from raftkv.transport._common import (
    PeerRefused,
    ProtocolViolation,
    TransportTuning,
    set_nodelay,
)
from raftkv.transport._handshake import HELLO_MAX_BYTES, check_hello, read_hello_frame
from raftkv.transport._snapshot import SnapshotReceiver
from raftkv.transport.tls import PeerTls, describe_tls_error, node_ids_of


@dataclass(slots=True)
class _Live:
    writer: asyncio.StreamWriter
    remote: tuple[str, int]
    last_seen: float  # loop time of the last bytes received


class InboundSide:
    """The accepting half of `PeerTransport` (which owns it and calls `handle` per connection)."""

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
        self._max_frame_bytes = max_frame_bytes
        self._tuning = tuning
        self._tls = tls
        self._log = logger
        self.running = False
        self.live: dict[NodeId, _Live] = {}
        self.versions: dict[NodeId, tuple[int, int]] = {}  # (format, command set) per peer
        self.features: dict[NodeId, int] = {}  # forwarding version per LIVE peer connection
        self.tasks: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._handshaking = 0
        self._last_overload_log = -1e9

    def addresses(self) -> dict[NodeId, tuple[str, int]]:
        return {peer: live.remote for peer, live in self.live.items()}

    def drop_peer(self, peer_id: NodeId) -> None:
        """Close the connection of a peer that is no longer a member."""
        live = self.live.get(peer_id)
        if live is not None:
            self._log.info("inbound_closed_not_member", peer=peer_id)
            live.writer.transport.abort()

    def drop_non_members(self) -> None:
        for peer_id in list(self.live):
            if not self._is_member(peer_id):
                self.drop_peer(peer_id)

    def drop_idle(self, now: float, *, restart_clocks: bool = False) -> None:
        """Abort connections silent for longer than `idle_timeout` (half-open); with
        `restart_clocks` (our own loop just stalled) count their silence from now instead."""
        limit = self._tuning.idle_timeout
        if restart_clocks:
            for live in self.live.values():
                live.last_seen = max(live.last_seen, now)
            return
        for peer_id, live in list(self.live.items()):
            if now - live.last_seen > limit:
                self._log.warning("inbound_dropped_idle", peer=peer_id, idle_timeout=limit)
                live.writer.transport.abort()

    def abort_all(self) -> None:
        for writer in self.tasks.values():
            writer.transport.abort()

    # ---- one connection --------------------------------------------------------------------

    async def handle_tls(self, conn: socket.socket) -> None:
        """TLS mode: complete the TLS handshake on an accepted socket, then `handle` it."""
        try:
            peer = conn.getpeername()
        except OSError:  # gone before we looked
            conn.close()
            return
        remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        if not self.running or self._tls is None or not self._admit(remote):
            conn.close()
            return
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=HELLO_MAX_BYTES, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            async with asyncio.timeout(self._tuning.hello_timeout):
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, conn, ssl=self._tls.server
                )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            reason = (
                "no TLS handshake within hello_timeout"
                if isinstance(exc, TimeoutError)
                else describe_tls_error(exc)
            )
            self._log.warning("inbound_refused", remote=remote, reason=reason)
            conn.close()
            return
        finally:
            self._handshaking -= 1
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await self.handle(reader, writer)

    def _admit(self, remote: str) -> bool:
        """Count one more connection in its handshake, unless there are too many."""
        if self._handshaking >= self._tuning.max_handshaking:
            loop = asyncio.get_running_loop()
            if loop.time() - self._last_overload_log >= 1.0:
                self._last_overload_log = loop.time()
                self._log.warning(
                    "inbound_refused",
                    remote=remote,
                    reason="too many connections in their handshake",
                )
            return False
        self._handshaking += 1
        return True

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if not self.running or task is None:
            writer.transport.abort()
            return
        peername = writer.get_extra_info("peername")
        remote = (str(peername[0]), int(peername[1])) if peername else ("?", 0)
        log = self._log.bind(remote=f"{remote[0]}:{remote[1]}")
        if not self._admit(f"{remote[0]}:{remote[1]}"):
            writer.transport.abort()
            return
        self.tasks[task] = writer
        handshaking = True
        peer_id: NodeId | None = None
        receiver: SnapshotReceiver | None = None
        try:
            set_nodelay(writer)
            async with asyncio.timeout(self._tuning.hello_timeout):
                hello = await self._handshake(reader, writer)
            handshaking = False
            self._handshaking -= 1
            peer_id = hello.node_id
            log = log.bind(peer=peer_id)
            old = self.live.get(peer_id)
            if old is not None and not old.writer.transport.is_closing():
                raise PeerRefused(f"node {peer_id!r} already has a live connection")
            live = _Live(writer, remote, asyncio.get_running_loop().time())
            self.live[peer_id] = live
            # What the peer understands, for the leader's feature gate (runtime/features.py).
            self.versions[peer_id] = (hello.format_version, hello.command_set)
            self.features[peer_id] = hello.forwarding
            log.info("inbound_connected")
            self._on_peer_up(peer_id)
            if self._snapshot_dir is not None:
                receiver = SnapshotReceiver(
                    self._snapshot_dir,
                    peer_id,
                    log,
                    free_reserve=self._tuning.snapshot_free_reserve_bytes,
                )
            await self._receive(reader, live, peer_id, receiver)
            log.info("inbound_closed")
        except PeerRefused as exc:
            log.warning("inbound_refused", reason=str(exc))
        except FrameError as exc:
            log.warning("inbound_dropped_bad_frame", error=str(exc))
        except ProtocolViolation as exc:
            log.warning("inbound_dropped_protocol_violation", error=str(exc))
        except TimeoutError as exc:  # before the OSError clause: TimeoutError is an OSError
            if peer_id is None:
                log.warning("inbound_dropped_no_hello", timeout=self._tuning.hello_timeout)
            else:
                log.info("inbound_lost", error=str(exc) or "timeout")
        except ssl.SSLError as exc:  # an OSError too
            if handshaking:
                log.warning("inbound_refused", reason=describe_tls_error(exc))
            else:
                log.info("inbound_lost", error=describe_tls_error(exc))
        except (OSError, asyncio.IncompleteReadError) as exc:  # OSError includes ConnectionError
            log.info("inbound_lost", error=str(exc) or type(exc).__name__)
        except Exception:  # never let a peer's bytes crash the loop's exception handler
            log.exception("inbound_failed")
        finally:
            if handshaking:
                self._handshaking -= 1
            if receiver is not None:
                receiver.discard()
            if peer_id is not None:
                live_now = self.live.get(peer_id)
                if live_now is not None and live_now.writer is writer:
                    del self.live[peer_id]
                    self.features.pop(peer_id, None)
                    try:
                        self._on_peer_down(peer_id)
                    except Exception:
                        log.exception("on_peer_down_failed")
            writer.transport.abort()
            del self.tasks[task]

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Hello:
        cert_ids: list[str] | None = None
        if self._tls is not None:  # verified against the CA by `handle_tls` already
            cert_ids = node_ids_of(writer.get_extra_info("peercert"))
        first = await read_hello_frame(reader)
        return check_hello(
            first,
            cluster_name=self._cluster_name,
            own_id=self._node_id,
            is_member=self._is_member,
            cert_node_ids=cert_ids,
        )

    async def _receive(
        self,
        reader: asyncio.StreamReader,
        live: _Live,
        peer_id: NodeId,
        receiver: SnapshotReceiver | None,
    ) -> None:
        parser = FrameParser(self._max_frame_bytes)
        read_bytes = self._tuning.read_bytes
        loop = asyncio.get_running_loop()
        while True:
            data = await reader.read(read_bytes)
            if not data:
                return
            live.last_seen = loop.time()
            for msg in parser.feed(data):
                await self._dispatch(msg, peer_id, receiver)

    async def _dispatch(
        self, msg: WireMessage, peer_id: NodeId, receiver: SnapshotReceiver | None
    ) -> None:
        check_message(msg, max_snapshot_bytes=self._tuning.max_snapshot_bytes)
        match msg:
            case Ping():
                return
            case SnapshotChunk():
                if receiver is None:
                    raise ProtocolViolation("snapshot chunk, but snapshots travel inline here")
                await receiver.add_chunk(msg)
                return
            case SnapshotRejected():
                try:  # it concerns the connection's own peer: nothing else to check
                    self._on_snapshot_rejected(peer_id, msg)
                except Exception:
                    self._log.exception("on_snapshot_rejected_failed")
                return
            case Hello():
                raise ProtocolViolation("second Hello on a connection")
            case ForwardBatch() | ForwardReplies():
                if isinstance(msg, ForwardBatch) and self._forwarding < 1:
                    raise ProtocolViolation("ForwardBatch, but we did not announce forwarding")
                try:
                    taken = self._on_forward(peer_id, msg)
                except Exception:
                    self._log.exception("on_forward_failed", msg_type=type(msg).__name__)
                    return
                if not taken:
                    self._log.warning("forward_frame_dropped_no_handler", peer=peer_id)
                return
            case _:
                pass
        if msg.from_ != peer_id:
            raise ProtocolViolation(f"{type(msg).__name__} from {msg.from_!r} on {peer_id}'s link")
        if msg.to != self._node_id:
            raise ProtocolViolation(f"{type(msg).__name__} addressed to {msg.to!r}")
        if receiver is not None and isinstance(msg, InstallSnapshot):
            msg = await receiver.complete(msg)
        try:
            self._on_message(msg)
        except Exception:
            self._log.exception("on_message_failed", msg_type=type(msg).__name__)
