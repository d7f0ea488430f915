"""The lean HTTP/1.1 client that forwards a request to the leader over pooled connections.

Rules (forward.py's at-most-once rules rest on them):
- One request at a time per connection, no pipelining: a connection is either idle in the pool
  or carries exactly one request until its whole response has been parsed. Responses are parsed
  by httptools (llhttp, the parser aiohttp's C extension and uvicorn use; no parser of ours).
- Every failure is attributed to one of two exceptions, and nothing here ever sends a request
  twice (the one re-send is forward.py's decision, made only for session writes):
  * `NotSent` — no byte of the request left this node: the wait for a connection slot, the TCP
    connect, the TLS handshake (a certificate that does not verify included) failed or took
    longer than the connect timeout, or the leader's address is malformed.
  * `MaybeSent` — anything once a connection was taken, fresh or pooled: the write, the
    connection closing or resetting before the whole response arrived, a response the parser
    refuses. A pooled connection found already closed when it is taken is skipped, not used:
    nothing was written to it.
  A reply not complete by the caller's deadline is `TimedOut` (a MaybeSent that forward.py never
  re-sends: the request's time is up); the connect phase also ends by the deadline. The deadline
  is one timer on the loop per request, not a task-cancelling timeout. A cancellation (the
  client going away) aborts the connection in use, as does a failure or a TimedOut: a
  connection never goes back to the pool with a response still due.
- A connection goes back to the pool only after a complete response that keeps it alive
  (HTTP/1.1 without `Connection: close`) and with nothing else received. Bytes arriving on an
  idle connection (the leader never sends unsolicited data) close it.
- Idle connections are closed after `idle_timeout_s` (below the leader's keep-alive timeout, so
  the leader rarely closes one under a request) and are taken most recently used first. A
  connection is only reused for the same leader address.
- At most `max_connections` requests are in flight (the slot wait counts as connecting).
- Connections bind their source address to `source_ip` (nftables partitions on 127.0.0.x cut
  forwarding as they cut Raft traffic). With `ssl_context` every connection is TLS, verifying the
  leader's certificate and host name and presenting the context's (this node's peer) certificate.
- No proxy, no redirect following, no content decoding: the response is returned as received.
  Interim 1xx replies are skipped. A reply framed by closing the connection (no Content-Length,
  not chunked) is never complete here: MaybeSent (the API always sends a Content-Length).
- The request head is written from the caller's header pairs; a name or value with CR, LF or
  a colon in a name is refused before anything is sent (`NotSent`): no header injection.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import re
import ssl
from typing import Final

import httptools

_MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024  # a reply larger than this is refused (MaybeSent)
_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token


class NotSent(Exception):
    """Nothing of the request was sent: safe to send again or to report as not done."""


class MaybeSent(Exception):
    """The request may have reached the leader (and been applied): its outcome is unknown."""


class _TooLarge(Exception):
    """Raised from a parser callback: the reply is over _MAX_RESPONSE_BYTES."""


class _Extra(Exception):
    """Raised from a parser callback: bytes after the whole reply."""


class TimedOut(MaybeSent):
    """Sent, and no reply before the caller's deadline: the outcome is unknown."""


class Reply:
    """A parsed response: status, header pairs as received, body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _Conn(asyncio.Protocol):
    """One pooled connection to the leader (see the module rules)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[Reply] | None = None  # the response due, if any
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._complete = False
        self._status = 0
        self._keep_alive = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.transport = None
        self._fail(MaybeSent(f"connection closed before the reply ({exc or 'by the leader'})"))

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or self._complete:
            self.close()  # unsolicited bytes: this connection's framing can't be trusted
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.close()
            if not self._complete:
                self._fail(MaybeSent(f"unreadable reply from the leader: {exc}"))
                return
            # Bytes after a whole reply (on_message_begin refused them): the reply stands,
            # the connection is closed above.
        if self._complete and not waiter.done():
            if not self._keep_alive:
                self.close()  # after the reply: the leader asked for it (or HTTP/1.0)
            waiter.set_result(Reply(self._status, self._headers, b"".join(self._body)))

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost attributes a pending request

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            raise _Extra  # a second reply to one request: the parser stops here

    def on_header(self, name: bytes, value: bytes) -> None:
        # As aiohttp decodes them, so a header passed back is re-encoded to the same bytes.
        self._headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        # Read here: llhttp resets its flags once the message is complete.
        self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()
        if 100 <= self._status < 200:
            self._headers = []  # an interim reply (100 Continue): the real one follows

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > _MAX_RESPONSE_BYTES:
            raise _TooLarge
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = not 100 <= self._status < 200

    # -- use -----------------------------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[Reply]:
        """Write one request; the future gets its reply or a MaybeSent."""
        assert self.transport is not None and self._waiter is None
        self._headers = []
        self._body = []
        self._size = 0
        self._complete = False
        self._keep_alive = False
        waiter = self._waiter = self._loop.create_future()
        self.transport.write(data)
        return waiter

    def reusable(self) -> bool:
        """After its reply: may it carry another request?"""
        return not self.closed and self._complete and self.transport is not None

    def reset(self) -> None:
        self._waiter = None

    def expire(self) -> None:
        """The caller's deadline passed with the reply still due."""
        self._fail(TimedOut("no reply from the leader before the request's deadline"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: MaybeSent) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class LeaderClient:
    """Pooled keep-alive HTTP/1.1 connections to the leader's API (see the module rules)."""

    def __init__(
        self,
        *,
        source_ip: str | None,
        connect_timeout_s: float,
        idle_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 256,
    ) -> None:
        self._source_ip = source_ip
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._ssl = ssl_context
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[str, collections.deque[_Conn]] = {}
        self._busy: set[_Conn] = set()
        self._addresses: dict[str, tuple[str, int]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def scheme(self) -> str:
        return "https" if self._ssl is not None else "http"

    async def request(
        self,
        address: str,
        head: bytes,
        body: bytes,
        *,
        deadline: float | None = None,
        fresh: bool = False,
    ) -> Reply:
        """Send `head` + `body` (one whole request) to `address` (host:port) and read the reply.
        `deadline` (loop time): no reply by then is `TimedOut`; the connect phase ends by then
        too. `fresh`: on a new connection, never a pooled one. Raises NotSent or MaybeSent."""
        if self._closed:
            raise NotSent("the forwarding client is closed")
        loop = asyncio.get_running_loop()
        connect_s = self._connect_timeout_s
        if deadline is not None:
            connect_s = min(connect_s, deadline - loop.time())
        slots = self._slots
        if slots.locked():  # a free slot is taken without a timer (the common case)
            try:
                async with asyncio.timeout(connect_s):
                    await slots.acquire()
            except TimeoutError:
                raise NotSent("no free connection to the leader within the timeout") from None
        else:
            await slots.acquire()
        try:
            conn = None if fresh else self._pooled(address)
            if conn is None:
                if deadline is not None:
                    connect_s = min(connect_s, deadline - loop.time())
                conn = await self._connect(address, connect_s)
                if conn.transport is None:  # lost before we could write: nothing went out
                    raise NotSent(f"{address} closed the connection before the request")
            self._busy.add(conn)
            timer = None if deadline is None else loop.call_at(deadline, conn.expire)
            try:
                reply = await conn.send(head + body)
            except MaybeSent:
                conn.abort()
                raise
            except Exception as exc:  # anything else once connected: still maybe sent
                conn.abort()
                raise MaybeSent(f"{type(exc).__name__}: {exc}") from exc
            except BaseException:  # cancelled: a reply may still be due, never reuse it
                conn.abort()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
                self._busy.discard(conn)
                conn.reset()
            if conn.reusable():
                self._release(address, conn)
            else:
                conn.close()
            return reply
        finally:
            slots.release()

    async def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.abort()

    # -- the pool ------------------------------------------------------------------------------

    def _pooled(self, address: str) -> _Conn | None:
        pool = self._idle.get(address)
        if not pool:
            return None
        deadline = asyncio.get_running_loop().time() - self._idle_timeout_s
        while pool:
            conn = pool.pop()  # most recently used: the least likely to be closed by now
            if conn.closed or conn.idle_since <= deadline:
                conn.close()  # nothing was written to it: skipping it is safe
                continue
            return conn
        return None

    def _release(self, address: str, conn: _Conn) -> None:
        if self._closed:
            conn.close()
            return
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        self._idle.setdefault(address, collections.deque()).append(conn)
        if self._sweep is None:
            self._sweep = loop.call_later(self._idle_timeout_s, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Close connections idle for `idle_timeout_s`; re-arm while any are left."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() - self._idle_timeout_s
        for address in list(self._idle):
            pool = self._idle[address]
            while pool and (pool[0].closed or pool[0].idle_since <= deadline):
                pool.popleft().close()  # oldest first
            if not pool:
                del self._idle[address]
        if self._idle:
            oldest = min(p[0].idle_since for p in self._idle.values())
            self._sweep = loop.call_at(oldest + self._idle_timeout_s, self._sweep_idle)

    async def _connect(self, address: str, timeout_s: float) -> _Conn:
        try:
            host, port = self._address(address)
        except ValueError as exc:
            raise NotSent(f"bad leader address {address!r}: {exc}") from None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Conn(loop),
                    host,
                    port,
                    ssl=self._ssl,
                    server_hostname=host if self._ssl is not None else None,
                    local_addr=(self._source_ip, 0) if self._source_ip else None,
                )
        except TimeoutError:
            raise NotSent(f"connect to {address} timed out") from None
        except (OSError, ssl.SSLError) as exc:  # refused, unreachable, handshake, certificate
            raise NotSent(f"cannot connect to {address}: {exc}") from exc
        return conn

    def _address(self, address: str) -> tuple[str, int]:
        known = self._addresses.get(address)
        if known is None:
            host, sep, port = address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("expected host:port")
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]  # an IPv6 literal
            known = self._addresses[address] = (host, int(port))
        return known


@functools.lru_cache(maxsize=64)  # callers use a handful of constant names
def _token(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def request_head(method: str, target: str, host: str, headers: list[tuple[str, str]]) -> bytes:
    """The request line and header block (ending in the empty line). Raises ValueError on a
    name or value that would split the head (CR, LF; a colon or space in a name)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers:
        if not _token(name):
            raise ValueError(f"header name {name!r} cannot be forwarded")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    text = "\r\n".join(lines)
    # Exactly one CR and one LF per line break we made: none inside a value, target or host.
    breaks = len(lines)  # the joins, plus the final CRLF
    spaces = text.count(" ", 0, len(lines[0]))  # method SP target SP version
    if text.count("\n") != breaks or text.count("\r") != breaks or spaces != 2:
        raise ValueError("a header value, the target or the host cannot be forwarded")
    return text.encode("utf-8", "surrogateescape")
