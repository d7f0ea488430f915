"""A tiny HTTP/1.1 (optionally HTTPS) server in threads for the transport tests."""

from __future__ import annotations

import socket
import ssl
import threading

OK = b'{"key": "k", "value": "v", "message": "ok"}'


class Server:
    """A tiny HTTP/1.1 server in a thread: `/kv/drop` hangs up after reading the request,
    `/session` is 404 (no sessions), anything else answers 200 with OK."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        self.auth: list[str | None] = []  # the Authorization header of each request
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        conn = raw
        if self.ssl_context is not None:
            try:
                conn = self.ssl_context.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):
                raw.close()
                return
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        chunk = conn.recv(65536)
                    except OSError:  # includes ssl.SSLError: a client that gave up
                        return
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                length = 0
                auth = None
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                    elif name.strip().lower() == "authorization":
                        auth = value.strip()
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                method, target, _ = lines[0].split(" ", 2)
                self.requests.append(f"{method} {target}")
                self.auth.append(auth)
                if target == "/kv/drop":
                    return  # read it all, answer nothing, hang up
                if target == "/session":
                    body, status = b'{"error": "no such endpoint", "code": "not_found"}', "404"
                else:
                    body, status = OK, "200"
                conn.sendall(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    def close(self) -> None:
        self.sock.close()
