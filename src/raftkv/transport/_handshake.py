"""The acceptor's side of the peer handshake: who may open an inbound connection.

Rules:
- The connector's first frame must be a `Hello` (at most `HELLO_MAX_BYTES`, before which a
  peer is unknown and may not make us buffer more) with our protocol version and cluster name.
- Its node id must be a member of the LIVE replicated configuration (`is_member`, supplied by
  the driver from the core's configuration, not the YAML: a member added later is admitted, a
  removed one refused) and must not be our own id.
- With mutual TLS, the certificate's node id (URI SAN `raftkv://node/<id>`, verified against
  the cluster CA by then) must equal the Hello's: a member's certificate cannot speak for
  another member.
- The checks are a pure function (`check_hello`) so they can be fuzzed without sockets.
- A refusal raises `PeerRefused` (or `ProtocolViolation`/`FrameError` for malformed
  handshakes) whose message is the log line's reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Final

from raftkv.codec.validate import check_message
from raftkv.codec.wire import (
    LENGTH_PREFIX_BYTES,
    PROTOCOL_VERSION,
    Hello,
    WireMessage,
    decode_payload,
    frame_length,
)
from raftkv.raft.types import NodeId
from raftkv.transport._common import PeerRefused, ProtocolViolation

HELLO_MAX_BYTES: Final = 64 << 10


def check_hello(
    msg: WireMessage,
    *,
    cluster_name: str,
    own_id: NodeId,
    is_member: Callable[[NodeId], bool],
    cert_node_ids: Sequence[str] | None,
) -> Hello:
    """The Hello if `msg` is an acceptable first frame; raises otherwise.

    `cert_node_ids` is None without TLS, else the node ids the verified certificate names."""
    if not isinstance(msg, Hello):
        raise ProtocolViolation(f"first frame is {type(msg).__name__}, not Hello")
    check_message(msg)
    if msg.protocol_version != PROTOCOL_VERSION:
        raise ProtocolViolation(
            f"protocol version {msg.protocol_version}, expected {PROTOCOL_VERSION}"
        )
    if msg.cluster_name != cluster_name:
        raise ProtocolViolation(f"cluster {msg.cluster_name!r}, expected {cluster_name!r}")
    if msg.node_id == own_id:
        raise ProtocolViolation("peer claims our own node id")
    if cert_node_ids is not None and msg.node_id not in cert_node_ids:
        named = ", ".join(cert_node_ids) if cert_node_ids else "no node id"
        raise PeerRefused(
            f"Hello claims node {msg.node_id!r} but its certificate names {named} "
            "(wrong node id in SAN)"
        )
    if not is_member(msg.node_id):
        raise PeerRefused(f"node {msg.node_id!r} is not a member of the live configuration")
    return msg


async def read_hello_frame(reader: asyncio.StreamReader) -> WireMessage:
    """Read the first frame (bounded by `HELLO_MAX_BYTES`); raises `FrameError` if malformed."""
    prefix = await reader.readexactly(LENGTH_PREFIX_BYTES)
    payload = await reader.readexactly(frame_length(prefix, HELLO_MAX_BYTES))
    return decode_payload(payload)
