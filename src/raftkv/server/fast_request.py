"""What a request and a reply are on the fast engine (`fast_http.py`): the request object the
hot handlers get, the reply bytes, and `HandBack`.

Rules:
- `FastRequest` has exactly the part of aiohttp's `web.Request` the hot handlers use (method,
  headers, query, raw path, body, transport, a per-request dict); handlers typed for aiohttp's
  request get it through a cast (`fast_routes.py`), so both engines run the same handler code.
- `serialize` writes what aiohttp would write for the same response to an HTTP/1.1 request,
  header for header (Date aside); `test_server_engines.py` compares both engines' bytes.
- `JsonReply` is the hot routes' 200 reply without aiohttp's Response (issue 12: building a
  Response and serializing it cost more than the rest of a stale GET): the same bytes as
  `serialize(json_response(body, headers={"ETag": etag}))`, from a head cached per second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from aiohttp import hdrs, web
from aiohttp.helpers import HeadersMixin, rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion, HttpVersion11
from multidict import CIMultiDictProxy, MultiDictProxy
from yarl import URL

if TYPE_CHECKING:
    from raftkv.server.fast_http import FastProtocol


class Pending:
    """A reply that waits for a node future (the callback path, `FastRoutes.handle_soon`):
    once `future` is done, `finish()` makes the reply or raises as the handler would."""

    __slots__ = ("finish", "future", "start")

    def __init__(
        self, future: asyncio.Future[Any], finish: Callable[[], web.StreamResponse | JsonReply]
    ) -> None:
        self.future = future
        self.finish = finish
        self.start = 0.0  # when the request was taken (metrics)


class HandBack(Exception):
    """Raised by a read worker's node (`read_worker.py`): the node itself must answer this
    request; the connection goes back to it with this request's bytes and all after them."""


class FastRequest(HeadersMixin):
    """The part of aiohttp's `web.Request` the hot handlers use (method, headers, query, raw
    path, body, transport, a per-request dict); content_type and content_length are
    aiohttp's own (HeadersMixin)."""

    version: HttpVersion = HttpVersion11

    def __init__(
        self,
        method: str,
        raw_path: str,
        query_string: str,
        headers: CIMultiDictProxy[str],
        protocol: FastProtocol,
    ) -> None:
        self.method = method
        self._raw_path = raw_path
        self._query_string = query_string
        self._headers = headers
        self._proxy = headers
        self._protocol = protocol
        self._url: URL | None = None
        self._state: dict[object, object] = {}  # aiohttp's request storage (auth's principal)
        self.body = b""
        self.reserved = 0  # body bytes reserved in the gate until the reply
        self.keep_alive = True
        self.raw = b""  # the request's bytes, kept in a read worker only (HandBack)

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._proxy

    @property
    def rel_url(self) -> URL:
        if self._url is None:
            # As aiohttp builds it from an origin-form target (encoded: nothing re-quoted).
            self._url = URL.build(
                path=self._raw_path, query_string=self._query_string, encoded=True
            )
        return self._url

    @property
    def raw_path_qs(self) -> str:
        """The target as received (what `rel_url.raw_path_qs` gives, without building a URL)."""
        if self._query_string:
            return f"{self._raw_path}?{self._query_string}"
        return self._raw_path

    @property
    def path(self) -> str:
        return self.rel_url.path

    @property
    def query(self) -> MultiDictProxy[str]:
        return self.rel_url.query

    @property
    def body_exists(self) -> bool:
        return bool(self.body)

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._protocol.transport

    @property
    def remote(self) -> str | None:
        transport = self._protocol.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if isinstance(peer, list | tuple):
            return str(peer[0])
        return None if peer is None else str(peer)

    async def read(self) -> bytes:
        return self.body

    def get(self, key: object, default: object = None) -> object:
        return self._state.get(key, default)

    def __getitem__(self, key: object) -> object:
        return self._state[key]

    def __setitem__(self, key: object, value: object) -> None:
        self._state[key] = value


class JsonReply:
    """A 200 `application/json` reply with an optional ETag header (module rules)."""

    __slots__ = ("body", "etag")
    status = 200
    keep_alive: bool | None = None  # as web.Response: the request's keep-alive decides

    def __init__(self, body: bytes, etag: str | None = None) -> None:
        self.body = body
        self.etag = etag

    def render(self, keep_alive: bool) -> bytes:
        now = int(time.time())
        if now != _tail[0]:
            _tail[:] = [now, _tail_of(True), _tail_of(False)]
        tail = _tail[1] if keep_alive else _tail[2]
        length = str(len(self.body)).encode("ascii")
        if self.etag is None:
            return b"".join((_OK_JSON, length, tail, self.body))
        # An ETag is a revision made by us ('"<digits>"'): nothing to check or escape.
        return b"".join((_OK_ETAG, self.etag.encode("ascii"), _ETAG_JSON, length, tail, self.body))


_OK_JSON: Final = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
_OK_ETAG: Final = b"HTTP/1.1 200 OK\r\nETag: "
_ETAG_JSON: Final = b"\r\nContent-Type: application/json\r\nContent-Length: "
_tail: list[Any] = [0, b"", b""]  # (second, tail with keep-alive, tail closing): per second


def _tail_of(keep_alive: bool) -> bytes:
    close = "" if keep_alive else "\r\nConnection: close"
    return (
        f"\r\nDate: {rfc822_formatted_time()}\r\nServer: {SERVER_SOFTWARE}{close}\r\n\r\n".encode()
    )


def serialize(resp: web.StreamResponse, keep_alive: bool) -> bytes:
    """The bytes aiohttp would write for `resp` to an HTTP/1.1 GET/PUT/DELETE (Date aside)."""
    if not isinstance(resp, web.Response) or resp.chunked or resp.compression:
        raise TypeError(f"the fast engine cannot send {type(resp).__name__}")
    body = resp.body
    if not isinstance(body, bytes | bytearray):
        raise TypeError("the fast engine sends bytes bodies only")
    headers = resp.headers
    lines = [f"HTTP/1.1 {resp.status} {resp.reason}"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}")
    if hdrs.CONTENT_LENGTH not in headers:
        lines.append(f"Content-Length: {len(body)}")
    if body and hdrs.CONTENT_TYPE not in headers:
        lines.append("Content-Type: application/octet-stream")
    if hdrs.DATE not in headers:
        lines.append(f"Date: {rfc822_formatted_time()}")
    if hdrs.SERVER not in headers:
        lines.append(f"Server: {SERVER_SOFTWARE}")
    if not keep_alive and hdrs.CONNECTION not in headers:
        lines.append("Connection: close")
    head = "\r\n".join(lines)
    if head.count("\n") != len(lines) - 1 or head.count("\r") != len(lines) - 1:
        # aiohttp refuses such a header too (a 500): never let a value split the reply.
        raise ValueError("newline or carriage return in a reply header")
    return (head + "\r\n\r\n").encode("utf-8") + body
