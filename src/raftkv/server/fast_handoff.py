"""Where a fast connection goes when the fast engine does not serve it (`fast_http.py`, whose
module rules say when): to aiohttp's own handler, to a read worker, or back from a read worker
to the node. A mixin of `FastProtocol`.

Rules:
- The bytes not yet answered go along, from the first request that is not answered here
  (empty lines between messages skipped); replies to the requests before it went out first.
- A connection offered to a read worker that does not take it stays with this node, as a
  fresh FastProtocol that never offers it again.
- Once handed on, the protocol forgets the connection (it no longer counts in the cap here).
- In a read worker, a reply made once the node refuses reads is not written: its request and
  all after it go back to the node (`_refused`, checked just before the write; read_gate.py).
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from raftkv.server.fast_http import FastProtocol
    from raftkv.server.fast_request import FastRequest, Pending
    from raftkv.server.fast_routes import FastServer


class HandOffs:
    """A mixin of `FastProtocol`; it only uses the members declared below."""

    if TYPE_CHECKING:
        transport: asyncio.Transport | None
        _server: FastServer
        _stream: bytes | bytearray
        _front: int
        _to_worker: int | None
        _reading_paused: bool
        _queue: collections.deque[FastRequest]
        _task: asyncio.Task[None] | None
        _serving: FastRequest | None
        _pending: Pending | None

        def _release(self, req: FastRequest) -> None: ...

        def _cancel_timers(self) -> None: ...

        def _returned(self, rest: bytes) -> asyncio.Protocol: ...

    def _hand_off(self) -> None:
        transport = self.transport
        if transport is None:
            return
        stream = self._stream
        start = self._front
        while start < len(stream) and stream[start] in b"\r\n":
            start += 1
        rest = bytes(stream[start:])
        self._stream = b""
        self.transport = None
        self._server.forget(cast("FastProtocol", self))
        server = self._server
        if self._to_worker is not None and server.workers is not None:
            if server.workers.offer(self._to_worker, transport, rest):
                transport.close()  # the worker holds its own descriptor of the connection
                return
            # Not sent (the worker is busy or gone): this node serves it after all.
            if self._reading_paused:
                transport.resume_reading()
            transport.set_protocol(self._returned(rest))
            transport.get_protocol().connection_made(transport)
            return
        if server.hand_back is not None:  # a read worker: everything else is the node's
            server.hand_back(transport, rest)
            return
        if self._reading_paused:  # first: aiohttp may pause it again while it takes `rest`
            transport.resume_reading()
        make_handler = self._server.aiohttp_handler
        assert make_handler is not None  # only a read worker has none, and it has hand_back
        handler = make_handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if rest:
            handler.data_received(rest)

    def _refused(self, req: FastRequest) -> bool:
        """In a read worker whose node refuses reads now (read_gate.py): `req` goes back to the
        node unanswered (True), which answers it with its own error."""
        refused = self._server.replies_refused
        if refused is None or not refused():
            return False
        self._hand_back(req)
        return True

    def _hand_back(self, req: FastRequest) -> None:
        """A read worker: `req` and what follows it go back to the node (HandBack)."""
        rest = b"".join([req.raw, *(q.raw for q in self._queue), self._stream])
        for queued in self._queue:
            self._release(queued)
        self._queue.clear()
        self._task = self._serving = self._pending = None
        transport, hand_back = self.transport, self._server.hand_back
        self._stream = b""
        self.transport = None
        self._cancel_timers()
        self._server.forget(cast("FastProtocol", self))
        if transport is not None and hand_back is not None:
            hand_back(transport, rest)
