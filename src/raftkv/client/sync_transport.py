"""The blocking transport of `Client`: stdlib `http.client`, one keep-alive pool per node.

Rules:
- `send` performs exactly one HTTP exchange and never re-sends; it reports failures as the
  engine's outcomes: `NotSent` when the connection could not be made (including the TLS
  handshake: nothing of the request left), `MaybeSent` once it was up.
- `Send.fresh`: a new connection with `Connection: close`, closed after the reply, so that a
  failure is attributable. Otherwise an idle pooled connection is reused when there is one; a
  failure on it is `MaybeSent(reused=True)` and every idle connection to that node is dropped
  (after a restart they are all dead).
- Timeouts: the connect timeout covers TCP + TLS; then each socket operation is bounded by the
  attempt's timeout (http.client has no whole-exchange deadline).
- Thread-safe: the pool is guarded by a lock; a connection is used by one thread at a time.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import urllib.parse
from typing import Final

from raftkv.client.engine import MaybeSent, NotSent, Outcome, Send
from raftkv.client.wire import Reply

MAX_IDLE_PER_NODE: Final = 32


class SyncTransport:
    def __init__(self, ssl_context: ssl.SSLContext | None) -> None:
        self._ssl_context = ssl_context
        self._lock = threading.Lock()
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}
        self._closed = False

    def send(self, s: Send) -> Outcome:
        conn = None if s.fresh else self._take(s.endpoint)
        reused = conn is not None
        if conn is None:
            conn = self._connection(s.endpoint, s.connect_timeout_s)
            try:
                conn.connect()
            except ssl.SSLCertVerificationError as exc:
                conn.close()
                return NotSent(exc.verify_message or str(exc), tls=True)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                return NotSent(_describe(exc))
        try:
            if conn.sock is not None:
                conn.sock.settimeout(s.timeout_s)
            headers = dict(s.headers)
            if s.fresh:
                headers["Connection"] = "close"
            conn.request(s.method, s.target, body=s.body or None, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            self._drop_idle(s.endpoint)
            return MaybeSent(_describe(exc), reused=reused)
        reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
        if s.fresh or resp.will_close:
            conn.close()
        else:
            self._give_back(s.endpoint, conn)
        return reply

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _connection(self, endpoint: str, timeout_s: float) -> http.client.HTTPConnection:
        parts = urllib.parse.urlsplit(endpoint)
        host, port = parts.hostname or "", parts.port
        if parts.scheme == "https":
            return http.client.HTTPSConnection(
                host, port, timeout=timeout_s, context=self._ssl_context
            )
        return http.client.HTTPConnection(host, port, timeout=timeout_s)

    def _take(self, endpoint: str) -> http.client.HTTPConnection | None:
        with self._lock:
            conns = self._idle.get(endpoint)
            return conns.pop() if conns else None

    def _give_back(self, endpoint: str, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            conns = self._idle.setdefault(endpoint, [])
            if not self._closed and len(conns) < MAX_IDLE_PER_NODE:
                conns.append(conn)
                return
        conn.close()

    def _drop_idle(self, endpoint: str) -> None:
        with self._lock:
            conns = self._idle.pop(endpoint, [])
        for conn in conns:
            conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "server closed the connection"
    return f"{type(exc).__name__}: {exc}"
