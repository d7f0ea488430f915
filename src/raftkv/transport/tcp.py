"""Peer transport over TCP: length-prefixed msgspec frames (`raftkv.codec.wire`) on asyncio streams.

Rules:
- One persistent OUTBOUND connection per peer, used only for sending (`_outbound.py`); the
  peer's own outbound connection brings its messages here. So: one connection per direction.
- `send` never blocks and never raises for a down peer: messages for a peer that is not
  connected are dropped (Raft resends) and `on_unreachable(peer)` is reported, at most once per
  `unreachable_interval` per peer. A message addressed to this node is a caller bug: ValueError.
- Coalescing: everything handed to `send` during one loop turn is encoded and written with one
  `writer.write` per peer, from one `call_soon` callback. `send(..., now=True)` writes at once
  (what was queued before it first, so a peer's messages never overtake each other): for a
  batch already gathered (a Ready's messages), waiting for the end of the turn only adds
  latency (issue 12: the leader's appends left ~60 µs later, behind its WAL hand-off).
  `send_from_thread` (any thread) writes append acks and vote replies at once when the
  connection is plain TCP and idle (`_outbound.py`), and hands back what the loop must send.
- Callbacks (`on_unreachable`, `on_snapshot_status`) run from their own loop callbacks, never
  inside `send`, so a driver can call back into the core without re-entering its Ready handling.
  `on_message` is called from the connection's `data_received` (a Protocol, no reader task),
  one message at a time, in order.
- Inbound (`_inbound.py`, `_handshake.py`): the connector's first frame must be `Hello` with our
  protocol version and cluster name and a node id that `is_member` accepts (the driver passes
  the LIVE configuration; by default: the peers this transport knows addresses for); with TLS
  its certificate must name that id. A Hello never displaces a live connection. Every later
  frame is type- and value-checked (`codec.validate`) before `on_message`; anything wrong is
  logged and the connection dropped. Nothing a peer sends can raise out of a protocol callback.
- Housekeeping, every `keepalive_interval`: idle outbound connections send a `Ping`; inbound
  ones silent for `idle_timeout` are dropped (half-open).
- TLS (`tls`, a `PeerTls`): both directions are mutual TLS with the cluster CA; the dialled
  peer's certificate must name the peer's node id. Contexts are taken per connection, so
  `PeerTls.reload()` applies to every new connection without a restart.
- Snapshots: see `_snapshot.py` (file mode when `snapshot_dir` is given, else inline). A
  receiver that discards a corrupt snapshot says so with `report_snapshot_rejected` (a
  `SnapshotRejected` frame, only to peers whose advertised data format knows it); the sender's
  `on_snapshot_rejected` hears it from its inbound side.
- Write forwarding (`codec/forward.py`): `send_forward` writes a `ForwardBatch` or
  `ForwardReplies` at once (behind what is queued for that peer), only while our connection
  to the peer is up and -- for a batch -- the peer's live inbound connection announced
  forwarding (`forwarding_version`); it says whether the frame was handed to the socket.
  `queue_forward` puts one behind the turn's Raft messages to that peer instead (one write at
  the end of the turn; `before_flush` lets a caller queue at the start of that flush).
  Inbound forward frames go to the handler set with `set_forward_handlers`, and so does
  every end of a live link in either direction (`on_link_down`); up to _MAX_EARLY_BATCHES
  batches that arrive before the first handler is set wait for it (`_forwarding.py`).
  This node announces `forwarding` in its Hello.
- `stop` cancels and awaits every task it started and closes every socket: no leaks.
- Works on the default asyncio loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger

from raftkv.codec.wire import (
    MAX_FRAME_BYTES,
    SNAPSHOT_REJECTED_SINCE_FORMAT,
    SnapshotRejected,
    append_frame,
)
from raftkv.raft.messages import (
    AnyMessage,
    AppendEntriesResponse,
    InstallSnapshot,
    RequestVoteResponse,
)
from raftkv.raft.types import NodeId
from raftkv.transport._common import TransportTuning
from raftkv.transport._forwarding import ForwardingSide
from raftkv.transport._handshake import HELLO_MAX_BYTES
from raftkv.transport._inbound import InboundSide
from raftkv.transport._outbound import OutboundPeer
from raftkv.transport._snapshot import remove_stale_partials, stream_snapshot
from raftkv.transport.tls import PeerTls

__all__ = ["HELLO_MAX_BYTES", "PeerTransport", "TransportTuning"]


# Small replies the driver's WAL thread may write itself (send_from_thread).
_THREAD_SENDABLE = (AppendEntriesResponse, RequestVoteResponse)


def _ignore_unreachable(peer: NodeId) -> None:
    pass


def _ignore_snapshot_status(peer: NodeId, ok: bool) -> None:
    pass


def _ignore_snapshot_rejected(peer: NodeId, msg: SnapshotRejected) -> None:
    pass


class PeerTransport(ForwardingSide):
    """Sends Raft messages to peers and delivers theirs to `on_message`."""

    def __init__(
        self,
        node_id: NodeId,
        cluster_name: str,
        listen: tuple[str, int],
        peers: Mapping[NodeId, tuple[str, int]],
        on_message: Callable[[AnyMessage], None],
        *,
        source_host: str | None,
        on_unreachable: Callable[[NodeId], None] = _ignore_unreachable,
        on_snapshot_status: Callable[[NodeId, bool], None] = _ignore_snapshot_status,
        on_snapshot_rejected: Callable[[NodeId, SnapshotRejected], None] = (
            _ignore_snapshot_rejected
        ),
        max_frame_bytes: int = MAX_FRAME_BYTES,
        snapshot_dir: Path | None = None,
        logger: FilteringBoundLogger | None = None,
        rng: random.Random | None = None,
        tuning: TransportTuning | None = None,
        is_member: Callable[[NodeId], bool] | None = None,
        tls: PeerTls | None = None,
        advertise: tuple[int, int] = (1, 1),
        forwarding: int = 0,
    ) -> None:
        self._node_id = node_id
        self._forwarding = forwarding  # the forwarding version we announce (0: none)
        self._init_forwarding()
        self._advertise = advertise  # (format, command set) we understand, sent in our Hello
        self._cluster_name = cluster_name
        self._listen = listen
        # Our own entry is skipped, so callers may pass the whole cluster's address map.
        self._addrs = {p: a for p, a in peers.items() if p != node_id}
        self._on_message = on_message
        self._source_host = source_host
        self._on_unreachable = on_unreachable
        self._on_snapshot_status = on_snapshot_status
        self._max_frame_bytes = max_frame_bytes
        self._snapshot_dir = snapshot_dir
        base = logger if logger is not None else structlog.get_logger("raftkv.transport")
        self._log: FilteringBoundLogger = base.bind(node=node_id)
        self._rng = rng if rng is not None else random.Random()
        self._tuning = tuning if tuning is not None else TransportTuning()
        self._running = False
        self._stopped = False
        self._server: asyncio.Server | None = None
        self._listen_sock: socket.socket | None = None  # TLS mode's listener
        self._bound: tuple[str, int] | None = None
        self._peers: dict[NodeId, OutboundPeer] = {}
        self._dirty: dict[NodeId, OutboundPeer] = {}  # peers with pending messages this turn
        self._flush_handle: asyncio.Handle | None = None
        self._last_unreachable: dict[NodeId, float] = {}  # loop time of the last report
        self._snapshot_tasks: dict[NodeId, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()  # tasks we created, for stop()
        self._tls = tls
        # Inbound connections are protocols (_inbound_conn.py); stop() aborts them and waits
        # until each has ended (and finished a snapshot file operation it was in).
        self._in = InboundSide(
            node_id=node_id,
            cluster_name=cluster_name,
            is_member=is_member if is_member is not None else self._knows_address,
            on_message=on_message,
            on_peer_up=self._peer_is_up,
            on_peer_down=self._link_down,
            on_forward=self._take_forward,
            forwarding=forwarding,
            on_snapshot_rejected=on_snapshot_rejected,
            snapshot_dir=snapshot_dir,
            max_frame_bytes=max_frame_bytes,
            tuning=self._tuning,
            tls=tls,
            logger=self._log,
        )

    def peer_versions(self) -> Mapping[NodeId, tuple[int, int]]:
        """(format, command set) each peer advertised in its latest accepted Hello."""
        return self._in.versions

    def report_snapshot_rejected(self, to: NodeId, msg: SnapshotRejected) -> bool:
        """Tell `to` that the snapshot it sent us was discarded; False if not sent (`to` is
        not connected, or did not advertise a data format that knows the frame)."""
        fmt = self._in.versions.get(to, (1, 1))[0]
        peer = self._peers.get(to)
        if not self._running or peer is None or fmt < SNAPSHOT_REJECTED_SINCE_FORMAT:
            return False
        return peer.flush((msg,))

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on `listen` (port 0 picks a free port: see `listen_address`) and dial peers."""
        if self._running or self._stopped:
            raise RuntimeError("PeerTransport.start() may be called once")
        if self._snapshot_dir is not None:
            await asyncio.to_thread(self._snapshot_dir.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(remove_stale_partials, self._snapshot_dir)
        host, port = self._listen
        if self._tls is None:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(self._in.connection, host, port)
            sockname = self._server.sockets[0].getsockname()
        else:
            # TLS: our own accept loop, so each handshake uses the context current at accept
            # time (reload without restart) and a failed one is logged with its reason.
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.create_server((host, port), family=family)
            sock.setblocking(False)
            self._listen_sock = sock
            sockname = sock.getsockname()
            self._spawn(self._accept_tls(sock), "raftkv-transport-accept")
        self._bound = (str(sockname[0]), int(sockname[1]))
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._in.running = True
        for peer_id in sorted(self._addrs):
            self._add_peer(peer_id, self._addrs[peer_id])
        self._spawn(self._housekeeping(), "raftkv-transport-housekeeping")
        self._log.info("transport_started", host=self._bound[0], port=self._bound[1])

    async def stop(self) -> None:
        """Close the listener and every connection; cancel and await every task."""
        if self._stopped:
            return
        self._stopped = True
        self._running = False
        self._in.running = False
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._server is not None:
            self._server.close()
        if self._listen_sock is not None:
            self._listen_sock.close()
        for task in self._tasks:
            task.cancel()
        self._in.abort_all()
        # A connection accepted just now has a handler task that has not run yet; one loop turn
        # lets it start, see that we are stopped and close its socket.
        await asyncio.sleep(0)
        peers = list(self._peers.values())
        self._peers.clear()
        self._dirty.clear()
        await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._in.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()
        self._log.info("transport_stopped")

    @property
    def listen_address(self) -> tuple[str, int]:
        """The bound (host, port), known after `start`."""
        if self._bound is None:
            raise RuntimeError("not started")
        return self._bound

    def connected_peers(self) -> list[NodeId]:
        """Peers our outbound connection currently reaches (sorted)."""
        return sorted(p for p, peer in self._peers.items() if peer.connected)

    def inbound_peers(self) -> dict[NodeId, tuple[str, int]]:
        """Peers connected to us, with the remote address the connection came from."""
        return self._in.addresses()

    # ---- membership ------------------------------------------------------------------------

    def update_peer(self, node_id: NodeId, addr: tuple[str, int]) -> None:
        """Add a peer or change its address; a changed address is dialled at once."""
        if node_id == self._node_id:
            return
        self._addrs[node_id] = addr
        if not self._running:
            return
        peer = self._peers.get(node_id)
        if peer is None:
            self._add_peer(node_id, addr)
        elif peer.addr != addr:
            self._log.info("peer_address_updated", peer=node_id, host=addr[0], port=addr[1])
            peer.change_address(addr)

    def remove_peer(self, node_id: NodeId) -> None:
        """Forget a peer (removed from the cluster): close our connection to it and its
        connection to us (a removed member may no longer send us anything)."""
        self._in.drop_peer(node_id)
        self._addrs.pop(node_id, None)
        self._dirty.pop(node_id, None)
        peer = self._peers.pop(node_id, None)
        if peer is not None:
            self._spawn(peer.close(), f"raftkv-transport-close-{node_id}")
        task = self._snapshot_tasks.pop(node_id, None)
        if task is not None:
            task.cancel()

    def drop_non_members(self) -> None:
        """Close inbound connections whose peer `is_member` no longer accepts (call after a
        configuration change)."""
        self._in.drop_non_members()

    def _add_peer(self, peer_id: NodeId, addr: tuple[str, int]) -> None:
        peer = OutboundPeer(
            node_id=self._node_id,
            peer_id=peer_id,
            cluster_name=self._cluster_name,
            addr=addr,
            source_host=self._source_host,
            max_frame_bytes=self._max_frame_bytes,
            tuning=self._tuning,
            rng=self._rng,
            report_unreachable=self._report_unreachable,
            logger=self._log,
            tls=self._tls,
            advertise=self._advertise,
            forwarding=self._forwarding,
            on_down=self._link_down,
        )
        self._peers[peer_id] = peer
        peer.start()

    # ---- sending ---------------------------------------------------------------------------

    def send(self, msgs: Iterable[AnyMessage], *, now: bool = False) -> None:
        """Queue messages for their peers; they leave in one write per peer at the end of this
        loop turn, or with `now` in this call (with anything queued before them, in order).
        Never blocks; drops (and reports) what cannot be sent."""
        try:
            for msg in msgs:
                self._enqueue(msg)
        finally:
            # Even if a bad message raised, what was queued before it still goes out.
            if now:
                if self._flush_handle is not None:
                    self._flush_handle.cancel()
                self._flush()
            elif self._dirty and self._flush_handle is None:
                self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def send_from_thread(self, msgs: Iterable[AnyMessage]) -> list[AnyMessage]:
        """Any thread: write replies (append acks, vote replies) at once, without waiting for
        the loop; returns those that must go through `send` on the loop instead (TLS, peer
        not connected, something queued for it: `OutboundPeer.write_from_thread`)."""
        rest: list[AnyMessage] = []
        by_peer: dict[NodeId, list[AnyMessage]] = {}
        for msg in msgs:
            if isinstance(msg, _THREAD_SENDABLE) and msg.to != self._node_id:
                by_peer.setdefault(msg.to, []).append(msg)
            else:
                rest.append(msg)
        for to, group in by_peer.items():
            peer = self._peers.get(to)
            buf = bytearray()
            for msg in group:
                append_frame(buf, msg)
            if (
                not self._running
                or peer is None
                or len(buf) > self._max_frame_bytes
                or not peer.write_from_thread(bytes(buf), self._loop)
            ):
                rest.extend(group)
        return rest

    def _enqueue(self, msg: AnyMessage) -> None:
        to = msg.to
        if to == self._node_id:
            raise ValueError(f"{type(msg).__name__} addressed to this node ({to})")
        if not self._running:
            return
        peer = self._peers.get(to)
        if peer is None:
            if self._report_unreachable(to):
                self._log.warning("send_to_unknown_peer", peer=to)
            return
        is_file_snapshot = isinstance(msg, InstallSnapshot) and self._snapshot_dir is not None
        if not peer.connected:
            self._report_unreachable(to)
            if is_file_snapshot:
                self._call_soon(self._on_snapshot_status, to, False)
            return
        if isinstance(msg, InstallSnapshot) and is_file_snapshot:
            self._start_snapshot(peer, msg)
            return
        if len(peer.pending) >= self._tuning.max_pending_messages:
            if self._report_unreachable(to):
                self._log.warning("send_queue_full", peer=to)
            return
        peer.pending.append(msg)
        self._dirty[to] = peer

    def _flush(self) -> None:
        self._flush_handle = None
        if self._before_flush:
            self._run_before_flush()  # _forwarding.py: frames joining this write
        dirty, self._dirty = self._dirty, {}
        for peer in dirty.values():
            if peer.pending or peer.pending_raw:
                peer.flush()

    def _start_snapshot(self, peer: OutboundPeer, msg: InstallSnapshot) -> None:
        # Newest wins: a superseded transfer is cancelled (the receiver discards it when the
        # next transfer's first chunk arrives) and reports nothing.
        old = self._snapshot_tasks.pop(peer.peer_id, None)
        if old is not None:
            old.cancel()
        task = self._spawn(self._send_snapshot(peer, msg), f"raftkv-snapshot-{peer.peer_id}")
        self._snapshot_tasks[peer.peer_id] = task

    async def _send_snapshot(self, peer: OutboundPeer, msg: InstallSnapshot) -> None:
        log = self._log.bind(peer=peer.peer_id)
        ok = await stream_snapshot(peer, msg, self._tuning.snapshot_chunk_bytes, log)
        if self._snapshot_tasks.get(peer.peer_id) is asyncio.current_task():
            del self._snapshot_tasks[peer.peer_id]
        self._call_soon(self._on_snapshot_status, peer.peer_id, ok)

    def _report_unreachable(self, peer_id: NodeId) -> bool:
        """Report `peer_id` unreachable unless reported recently; True if reported now."""
        if not self._running:
            return False
        loop = asyncio.get_running_loop()
        now = loop.time()
        last = self._last_unreachable.get(peer_id, -math.inf)
        if now - last < self._tuning.unreachable_interval:
            return False
        self._last_unreachable[peer_id] = now
        self._call_soon(self._on_unreachable, peer_id)
        return True

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        asyncio.get_running_loop().call_soon(self._run_callback, callback, args)

    def _run_callback(self, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        if not self._running:
            return
        try:
            callback(*args)
        except Exception:
            self._log.exception("transport_callback_failed", callback=repr(callback))

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _knows_address(self, peer_id: NodeId) -> bool:
        return peer_id in self._addrs

    def _peer_is_up(self, peer_id: NodeId) -> None:
        outbound = self._peers.get(peer_id)
        if outbound is not None:
            outbound.peer_is_up()

    async def _accept_tls(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _addr = await loop.sock_accept(sock)
            except OSError as exc:  # e.g. EMFILE: log, breathe, go on
                self._log.warning("accept_failed", error=str(exc))
                await asyncio.sleep(0.1)
                continue
            self._spawn(self._in.handle_tls(conn), "raftkv-transport-in-tls")

    async def _housekeeping(self) -> None:
        """Keepalives out, half-open connections in: see the module's rules."""
        loop = asyncio.get_running_loop()
        interval = self._tuning.keepalive_interval
        last = loop.time()
        while self._running:
            await asyncio.sleep(interval)
            now = loop.time()
            for peer in list(self._peers.values()):
                peer.keepalive(now, interval)
            # After a stall of our own loop (CPU starvation, SIGSTOP, a long GC) the bytes our
            # peers sent meanwhile still wait unread in the sockets: silence we caused is not
            # theirs, so it restarts the idle clocks instead of dropping live links.
            stalled = now - last > self._tuning.idle_timeout / 2
            self._in.drop_idle(now, restart_clocks=stalled)
            last = now
