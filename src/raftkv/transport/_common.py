"""Settings and small helpers shared by the TCP transport's modules.

Rules:
- `TransportTuning` holds every knob with a default; production code passes none of them, tests
  shrink timeouts and chunk sizes.
- Nothing here does I/O except `set_nodelay`, which only sets a socket option.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TransportTuning:
    """Knobs of `PeerTransport`; the defaults suit a LAN cluster with a 100 ms election timeout."""

    max_buffered_bytes: int = 16 << 20
    """Per peer: above this many unsent bytes queued in the socket's write buffer, new messages
    to that peer are dropped and the peer reported unreachable (a stalled peer must not make us
    buffer without bound; Raft resends)."""
    max_pending_messages: int = 16384
    """Per peer: messages accepted by `send` within one loop turn before the newest are dropped."""
    backoff_initial: float = 0.02
    backoff_max: float = 1.0
    stable_after: float = 1.0
    """A connection that lived this long resets the reconnect backoff; one dropped sooner (e.g.
    refused by a handshake check) keeps doubling it, so a misconfigured peer is not hammered."""
    connect_timeout: float = 2.0
    hello_timeout: float = 5.0
    """Inbound: a connection that sends no complete Hello within this time is dropped."""
    unreachable_interval: float = 0.1
    """Per peer: `on_unreachable` is called at most once per this many seconds."""
    snapshot_chunk_bytes: int = 1 << 20
    read_bytes: int = 256 << 10
    """Inbound: the most bytes taken from the socket per read (one parse pass)."""
    keepalive_interval: float = 0.025
    """Outbound: a connection that wrote nothing for this long sends a `Ping` (one heartbeat
    interval; the driver passes its tick)."""
    idle_timeout: float = 0.5
    """Inbound: a connection silent for this long is dropped (half-open: the peer's host died
    without a FIN). The driver passes max(4 election timeouts, 0.5 s): a few missed keepalives,
    but not a GC pause or a busy loop."""
    max_handshaking: int = 32
    """Inbound: connections that have not completed their handshake (TLS + Hello) at once;
    more are closed at accept. With one live connection per member after the handshake, the
    memory a connection can make us buffer is bounded: members x max frame + this x 64 KiB."""
    max_snapshot_bytes: int = 8 << 30
    """Inbound: a snapshot transfer announcing more is refused (`raft.max_snapshot_bytes`);
    one that does not fit in the free space of the snapshot directory is refused too."""
    snapshot_free_reserve_bytes: int = 64 << 20
    """Inbound: free space left over after a received snapshot, for the log and the state."""


class ProtocolViolation(Exception):
    """A peer broke the protocol (frame order, handshake, sender id); drop its connection."""


class PeerRefused(Exception):
    """A connection is refused at admission (not a member, duplicate, TLS identity, too many
    handshakes); the message says why, for the log line."""


def set_nodelay(conn: asyncio.StreamWriter | asyncio.BaseTransport) -> None:
    """TCP_NODELAY: Raft traffic is small latency-bound frames; Nagle would add delay."""
    sock = conn.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
