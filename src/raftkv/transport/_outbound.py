"""One persistent outbound connection to one peer: connect, handshake, coalesced writes.

Rules:
- The connection only carries frames from this node to the peer; the peer's replies come on
  its own outbound connection to us. Bytes arriving on ours are a protocol violation.
- `Hello` is the first frame written after connecting; only then is the peer `connected`, and
  only a connected peer takes messages (the transport drops the rest; Raft resends).
- Reconnect with exponential backoff (`backoff_initial` doubling to `backoff_max`, jittered by
  the transport's own `random.Random`); every attempt calls `open_connection` with the host
  name, so it is resolved anew and a peer restarted under a new IP is found again.
- The source address is bound to `source_host` so address-keyed partitions (nftables rules
  between 127.0.0.1/.2/.3) can cut this connection.
- Writes: messages queued by `enqueue` during one loop turn go out in ONE `writer.write` when
  the transport flushes; a frame larger than `max_frame_bytes` is dropped here, since the
  receiver would drop the whole connection for it.
- `on_down(peer)` is called each time a connected link ends (frames written to it may not have
  arrived: the forwarding client fails what it sent on it as outcome-unknown).
- Keepalive: `keepalive` (called by the transport each interval) writes a `Ping` if nothing
  was written for an interval, so the acceptor can tell a live idle link from a half-open one.
- TLS: with a `PeerTls`, the connection is mutual TLS using the client context current at
  dial time; the peer's certificate must name `peer_id` (URI SAN), else the connection is
  closed and the reason logged, as for a failed TLS handshake.
- Writes from another thread (`write_from_thread`, the driver's WAL thread sending the acks
  it just made durable, issue 12): plain TCP only, on a dup of the socket, under `_wlock`,
  and only when the loop has nothing queued for the connection (no pending messages, an
  empty write buffer) — so frames never interleave. Every loop-side write takes the same lock.
  A partial write leaves its tail to the loop, which writes it before anything else on that
  connection (and drops it with the connection). The dup is closed before the loop's
  transport is aborted, so closing still resets the connection as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import ssl
import threading
from collections.abc import Callable, Sequence

from structlog.typing import FilteringBoundLogger

from raftkv.codec.wire import (
    PROTOCOL_VERSION,
    Hello,
    Ping,
    WireMessage,
    append_frame,
    encode_frame,
)
from raftkv.raft.types import NodeId
from raftkv.transport._common import TransportTuning, set_nodelay
from raftkv.transport.tls import PeerTls, describe_tls_error, node_ids_of

_PING = encode_frame(Ping())
_TCP = (socket.AF_INET, socket.AF_INET6)


class OutboundPeer:
    """The sending side toward one peer; owned and driven by `PeerTransport`."""

    def __init__(
        self,
        *,
        node_id: NodeId,
        peer_id: NodeId,
        cluster_name: str,
        addr: tuple[str, int],
        source_host: str | None,
        max_frame_bytes: int,
        tuning: TransportTuning,
        rng: random.Random,
        report_unreachable: Callable[[NodeId], bool],
        logger: FilteringBoundLogger,
        tls: PeerTls | None = None,
        advertise: tuple[int, int] = (1, 1),
        forwarding: int = 0,
        on_down: Callable[[NodeId], None] | None = None,
    ) -> None:
        self.peer_id = peer_id
        self._on_down = on_down
        self._tls = tls
        self._last_write = 0.0  # loop time of the last write (keepalive)
        self.addr = addr  # where to connect next; update_peer changes it
        self._hello = encode_frame(
            Hello(PROTOCOL_VERSION, cluster_name, node_id, *advertise, forwarding)
        )
        self._source_host = source_host
        self._max_frame_bytes = max_frame_bytes
        self._tuning = tuning
        self._rng = rng
        self._report_unreachable = report_unreachable
        self._log = logger.bind(peer=peer_id)
        self.writer: asyncio.StreamWriter | None = None  # set only while connected, Hello sent
        self.pending: list[WireMessage] = []  # queued this loop turn, written at flush
        self.pending_raw = bytearray()  # whole encoded frames queued behind them (forwarding)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # cuts a backoff sleep short (address changed)
        self._redial_now = True  # the next attempt skips the backoff sleep (so does the first)
        self._was_connected = False  # for one "lost" log line per outage, not per attempt
        self._closed = False  # set by close(); the loop also checks it, in case a cancel is lost
        self._wlock = threading.Lock()  # every write to the connection (loop or writer thread)
        self._fd = -1  # a dup of the plain-TCP socket while connected: for write_from_thread
        self._tail: tuple[asyncio.StreamWriter, bytes] | None = None  # a thread's unsent rest

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"raftkv-transport-out-{self.peer_id}"
        )

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.pending.clear()
        self.pending_raw = bytearray()

    def peer_is_up(self) -> None:
        """The peer just connected to us, so it is listening: if we are waiting out a backoff,
        dial now instead (a restarted peer is otherwise reached only after our backoff)."""
        if self.writer is None and not self._closed:
            self._redial_now = True
            self._wake.set()

    def change_address(self, addr: tuple[str, int]) -> None:
        """Point at a new address: drop the current connection and dial the new one at once."""
        self.addr = addr
        self._redial_now = True
        self._wake.set()
        if self.writer is not None:
            # abort (not close): queued bytes were meant for the old address's process.
            self.writer.transport.abort()

    @property
    def connected(self) -> bool:
        writer = self.writer
        return writer is not None and not writer.transport.is_closing()

    # ---- writing ---------------------------------------------------------------------------

    def flush(self, extra: Sequence[WireMessage] = (), *, raw: bytes = b"") -> bool:
        """Write all pending messages (then `extra`, then the whole encoded frames of
        `pending_raw`, then `raw`) with one write; False if they were dropped."""
        msgs = self.pending
        self.pending = []
        queued_raw = self.pending_raw
        if queued_raw:
            self.pending_raw = bytearray()
        writer = self.writer
        if writer is None or writer.transport.is_closing():
            self._report_unreachable(self.peer_id)
            return False
        buffered = writer.transport.get_write_buffer_size()
        if buffered > self._tuning.max_buffered_bytes:
            if self._report_unreachable(self.peer_id):  # rate-limited, so is the log line
                self._log.warning("peer_write_buffer_full", buffered=buffered, dropped=len(msgs))
            return False
        buf = bytearray()
        for msg in (*msgs, *extra) if extra else msgs:
            start = len(buf)
            length = append_frame(buf, msg)
            if length > self._max_frame_bytes:
                del buf[start:]
                self._log.error(
                    "message_too_large_dropped",
                    msg_type=type(msg).__name__,
                    size=length,
                    limit=self._max_frame_bytes,
                )
        buf += queued_raw
        buf += raw
        if buf:
            self._write(writer, buf)
            self._last_write = asyncio.get_running_loop().time()
        return True

    def _write(self, writer: asyncio.StreamWriter, data: bytes | bytearray) -> None:
        """Loop thread: write after any tail a thread left, under the write lock."""
        with self._wlock:
            self._push_tail_locked(writer)
            writer.write(data)

    def _push_tail_locked(self, writer: asyncio.StreamWriter) -> None:
        tail, self._tail = self._tail, None
        if tail is not None and tail[0] is writer and not writer.transport.is_closing():
            writer.write(tail[1])

    def _push_tail(self) -> None:
        with self._wlock:
            writer = self.writer
            if writer is None:
                self._tail = None
            else:
                self._push_tail_locked(writer)

    def write_from_thread(self, data: bytes, loop: asyncio.AbstractEventLoop) -> bool:
        """Any thread: write `data` (whole frames) now; False if the loop must send it instead
        (TLS, not connected, or the loop has something queued for this connection)."""
        with self._wlock:
            writer, fd = self.writer, self._fd
            if (
                fd < 0
                or writer is None
                or self._tail is not None
                or self.pending
                or self.pending_raw
            ):
                return False
            transport = writer.transport
            if transport.is_closing() or transport.get_write_buffer_size():
                return False
            try:
                sent = os.write(fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:
                return False  # nothing was written; the loop path reports the broken link
            if sent < len(data):
                self._tail = (writer, data[sent:])
                loop.call_soon_threadsafe(self._push_tail)
            return True

    def _attach(self, writer: asyncio.StreamWriter) -> None:
        """Publish a connected writer (Hello already written), with a dup for thread writes."""
        fd = -1
        sock = writer.get_extra_info("socket")
        if self._tls is None and sock is not None and sock.family in _TCP:
            fd = os.dup(sock.fileno())
        with self._wlock:
            self.writer, self._fd = writer, fd

    def _detach(self) -> None:
        with self._wlock:
            fd, self._fd = self._fd, -1
            self.writer = None
            self._tail = None
        if fd >= 0:
            os.close(fd)

    def keepalive(self, now: float, interval: float) -> None:
        """Write a Ping if the connection wrote nothing for `interval` seconds."""
        writer = self.writer
        if writer is None or writer.transport.is_closing() or now - self._last_write < interval:
            return
        if writer.transport.get_write_buffer_size() > 0:
            return  # bytes are still leaving: the link is not idle
        self._write(writer, _PING)
        self._last_write = now

    # ---- connection loop -------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._tuning.backoff_initial
        while not self._closed:
            if not self._redial_now:
                await self._sleep(delay * self._rng.uniform(0.5, 1.5))
                if self._closed:
                    return
            self._redial_now = False
            self._wake.clear()
            addr = self.addr
            connection = await self._connect(addr)
            if connection is None:
                delay = min(delay * 2, self._tuning.backoff_max)
                continue
            reader, writer = connection
            if self._closed:
                writer.transport.abort()
                return
            loop = asyncio.get_running_loop()
            since = loop.time()
            try:
                await self._serve(reader, writer, addr)
            finally:
                self._detach()  # the dup first: the abort below then closes the socket
                writer.transport.abort()
                if self._on_down is not None:
                    try:
                        self._on_down(self.peer_id)
                    except Exception:
                        self._log.exception("on_down_failed")
                # Not suppressing CancelledError: a close() landing here must end the task.
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            self._report_unreachable(self.peer_id)
            if loop.time() - since >= self._tuning.stable_after:
                delay = self._tuning.backoff_initial
            else:
                delay = min(delay * 2, self._tuning.backoff_max)

    async def _sleep(self, seconds: float) -> None:
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that lands
        # as its inner await completes, and close() would then wait forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _connect(
        self, addr: tuple[str, int]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        host, port = addr
        local_addr = (self._source_host, 0) if self._source_host is not None else None
        ctx = self._tls.client if self._tls is not None else None
        try:
            async with asyncio.timeout(self._tuning.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    local_addr=local_addr,
                    ssl=ctx,
                    server_hostname=self.peer_id if ctx is not None else None,
                )
        except ssl.SSLError as exc:  # before OSError, which it is
            self._log.warning(
                "peer_tls_refused", host=host, port=port, reason=describe_tls_error(exc)
            )
            return None
        except (OSError, TimeoutError) as exc:
            if self._was_connected:
                self._was_connected = False
                self._log.info("peer_connect_failed", host=host, port=port, error=str(exc))
            else:
                self._log.debug("peer_connect_failed", host=host, port=port, error=str(exc))
            return None
        if ctx is not None:
            named = node_ids_of(writer.get_extra_info("peercert"))
            if self.peer_id not in named:
                self._log.warning(
                    "peer_tls_refused",
                    host=host,
                    port=port,
                    reason=f"certificate names {', '.join(named) or 'no node id'}, "
                    f"not {self.peer_id!r} (wrong node id in SAN)",
                )
                writer.transport.abort()
                return None
        return reader, writer

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, addr: tuple[str, int]
    ) -> None:
        """Hand the connection to writers and wait until it is lost."""
        set_nodelay(writer)
        writer.write(self._hello)
        self._attach(writer)
        self._was_connected = True
        self._log.info("peer_connected", host=addr[0], port=addr[1])
        try:
            data = await reader.read(4096)
        except (OSError, ConnectionError) as exc:
            self._log.info("peer_connection_lost", error=str(exc))
            return
        if data:
            self._log.warning("peer_sent_data_on_outbound_connection", size=len(data))
        elif self.addr == addr:
            self._log.info("peer_connection_closed")
        else:
            self._log.info("peer_address_changed", host=self.addr[0], port=self.addr[1])
