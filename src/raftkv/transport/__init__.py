"""raftkv.transport: moving Raft messages between nodes.

- `tcp.PeerTransport`: length-prefixed msgspec frames (`raftkv.codec.wire`) over asyncio
  streams, one outbound connection per peer, coalesced writes, reconnect with backoff,
  snapshot files streamed in chunks. Modules starting with `_` are its internals.
"""
