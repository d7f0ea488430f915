"""HTTP hardening: what one client (or many) may cost a node before it is refused.

Rules:
- Request bodies are taken in exactly one place, `body_middleware`, before any handler runs:
  * a `Content-Encoding` other than identity is refused with 415 `unsupported_content_encoding`
    (the server never decompresses: aiohttp's `auto_decompress` is off too, so a 3 KiB gzip
    body can neither become a 3 MiB value past `max_value_bytes` nor a 500 when it is invalid);
  * the body must arrive within `body_timeout_ms` (a client trickling its body holds a
    connection and a buffer: 408 `body_timeout`, connection closed);
  * the bytes of all bodies being held at once are capped (`max_inflight_body_bytes`): a body
    counts with its Content-Length (or the largest allowed body when it has none) from before
    it is read until its handler is done; over the cap -> 503 `server_busy` with Retry-After;
  * any error while reading (broken chunked encoding, truncated body) is 400
    `body_read_error`, never a 500. After 408 or 400 the connection is closed: the parser's
    position in the stream is unknown.
  The body is read with `request.read()`, which caches it, so handlers read it again for free.
- Concurrent connections are capped (`max_connections`, see runner.py): connection number
  cap + 1 is answered 503 `too_many_connections` and closed at once.
- Idle keep-alive connections are closed after `keepalive_timeout_ms` (aiohttp's default is an
  hour).
- Defaults are far above what benchmarks use (c=256 must never meet a cap), and low enough that
  one host cannot exhaust a node's memory or file descriptors with them.
- A value is one Raft entry and must fit in one peer frame: `largest_value_bytes` is that bound,
  measured by encoding a worst-case entry, minus headroom for command fields added later.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from raftkv.codec.commands import encode_command
from raftkv.codec.wire import MAX_FRAME_BYTES, encode_frame
from raftkv.kv.commands import Put
from raftkv.raft.messages import AppendEntries
from raftkv.raft.types import Entry, Index, NodeId, Term
from raftkv.server.errors import ApiError, Handler, error_response
from raftkv.server.inputs import MAX_KEY_BYTES

# Room in an entry for command fields added after this release (sessions, leases, revisions).
ENTRY_HEADROOM_BYTES: Final = 64 * 1024
IDENTITY: Final = frozenset({"", "identity"})


@dataclass(frozen=True, slots=True)
class HttpLimits:
    body_timeout_ms: int = 30_000  # a request body must arrive within this
    keepalive_timeout_ms: int = 75_000  # idle keep-alive connections are closed after this
    max_connections: int = 10_000  # concurrent HTTP connections per node
    max_inflight_body_bytes: int = 1 << 30  # request-body bytes held at once per node


DEFAULT_HTTP_LIMITS: Final = HttpLimits()
HTTP_LIMIT_KEYS: Final = (
    "body_timeout_ms",
    "keepalive_timeout_ms",
    "max_connections",
    "max_inflight_body_bytes",
)


def largest_value_bytes(max_frame_bytes: int = MAX_FRAME_BYTES) -> int:
    """The largest value whose Put, with a key of the largest size, fits in one AppendEntries
    frame of `max_frame_bytes` (every integer field at its widest encoding)."""
    big = 2**63 - 1
    data = encode_command(Put("k" * MAX_KEY_BYTES, ""))
    entry = Entry(Term(big), Index(big), data=data)
    node = NodeId("n" * 63)
    msg = AppendEntries(Term(big), node, node, Index(big), Term(big), (entry,), Index(big))
    # A large value's str32 header (5 bytes; the empty value took 1) and the entry data's
    # wider bin32 header (5 bytes; 4 KiB took 3): 16 covers both.
    overhead = len(encode_frame(msg)) + 16
    return max_frame_bytes - overhead - ENTRY_HEADROOM_BYTES


class BodyGate:
    """The in-flight body budget of one node (one event loop, so no lock is needed)."""

    def __init__(self, limits: HttpLimits, max_body_bytes: int) -> None:
        self.limits = limits
        self.max_body_bytes = max_body_bytes
        self.in_flight = 0  # bytes reserved by requests whose handler has not finished

    def admit(self, length: int | None) -> int:
        """Reserve a body of `length` bytes (None: unknown, the largest allowed) until the
        caller gives it back (`in_flight -= reserved`); raises 413 `request_too_large` or 503
        `server_busy`. Returns the bytes reserved."""
        if length is not None and length > self.max_body_bytes:
            raise ApiError(
                413,
                "request_too_large",
                "request body too large",
                max_bytes=self.max_body_bytes,
            )
        reserve = length if length is not None else self.max_body_bytes
        if self.in_flight + reserve > self.limits.max_inflight_body_bytes:
            raise ApiError(
                503,
                "server_busy",
                "too many request-body bytes in flight on this node; retry",
                headers={"Retry-After": "1"},
            )
        self.in_flight += reserve
        return reserve

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.body_exists:
            return await handler(request)
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in IDENTITY:
            raise ApiError(
                415,
                "unsupported_content_encoding",
                "request bodies must not be compressed (Content-Encoding: identity only)",
                content_encoding=encoding,
                headers={"Accept-Encoding": "identity"},
            )
        length = request.content_length
        reserve = self.admit(length)
        try:
            try:
                async with asyncio.timeout(self.limits.body_timeout_ms / 1000):
                    await request.read()
            except TimeoutError:
                return await _closing(
                    request,
                    408,
                    "body_timeout",
                    f"request body not received within {self.limits.body_timeout_ms} ms",
                )
            except (HttpProcessingError, ConnectionError, ValueError) as exc:
                return await _closing(
                    request, 400, "body_read_error", f"cannot read request body: {exc}"
                )
            return await handler(request)
        finally:
            self.in_flight -= reserve


async def _closing(request: web.Request, status: int, code: str, message: str) -> web.Response:
    """Send the error now, then close the connection: aiohttp would otherwise linger, reading
    the rest of an unfinished body for up to lingering_time, which is what a slow client wants."""
    resp = error_response(status, code, message)
    resp.force_close()
    await resp.prepare(request)
    await resp.write_eof()
    request.protocol.force_close()  # the transport flushes the reply before it closes
    return resp


def too_many_connections(limit: int) -> bytes:
    """The canned 503 for connection number `limit` + 1 (sent before closing it)."""
    body = msgspec.json.encode(
        {
            "error": "too many connections to this node; retry later",
            "code": "too_many_connections",
            "max_connections": limit,
        }
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Retry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
