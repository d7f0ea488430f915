"""A one-shot HTTP/1.1 client whose every failure says whether the request may have been sent.

Rules:
- Each request opens its own connection (bound to a chosen source address), sends exactly once
  with `Connection: close`, reads one reply (by its Content-Length) and closes. Nothing here
  ever re-sends: the recorded history must hold one op per request that reached the wire
  (ARCHITECTURE.md §4.7: aiohttp's client re-sends idempotent requests after a dropped
  connection, hence raw streams).
- A failure to connect (refused, unreachable, connect timeout) raises `NotSent`: not one byte
  left, so a write definitely did not happen. Any failure once connected (reset, EOF before a
  full reply, the reply timeout, a malformed reply) raises `MaybeSent`: a write may have happened.
- A fresh connection per request keeps that attribution exact: on a reused connection a reset
  could mean "closed while idle" or "died after reading the request", which look the same.
- Bound to a source address, the chaos clients' traffic is told apart from the nodes' own, so
  partitions (cut between the nodes' addresses) never cut the clients off.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Final

import msgspec

MAX_REPLY_BYTES: Final = 1 << 20


class NotSent(Exception):
    """Could not connect: the request was definitely not sent."""


class MaybeSent(Exception):
    """Failed after connecting: the server may have acted on the request."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> dict[str, object] | None:
        """The body as a JSON object, or None if it is not one."""
        try:
            doc = msgspec.json.decode(self.body)
        except msgspec.DecodeError:
            return None
        return doc if isinstance(doc, dict) else None


def encode_request(
    method: str,
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    content_type = (
        "" if "Content-Type" in (headers or {}) else ("Content-Type: text/plain; charset=utf-8\r\n")
    )
    head = (
        f"{method} {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Connection: close\r\n"
        f"{content_type}{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def parse_head(head: bytes) -> tuple[int, int | None]:
    """(status, Content-Length or None) of a reply head ending in a blank line.
    Raises ValueError if it is not an HTTP/1.x reply head raftkv would send."""
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"bad status line {lines[0][:80]!r}")
    length: int | None = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        match name.strip().lower():
            case b"content-length":
                length = int(value.strip())
                if not 0 <= length <= MAX_REPLY_BYTES:
                    raise ValueError(f"bad Content-Length {length}")
            case b"transfer-encoding":
                raise ValueError("chunked replies are not expected from raftkv")
    return int(parts[1]), length


async def request(
    method: str,
    host: str,
    port: int,
    path: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    source_ip: str | None = None,
    connect_timeout_s: float = 1.0,
    timeout_s: float = 5.0,
) -> Reply:
    """Send one request on a fresh connection; see the module rules for the two failures."""
    try:
        async with asyncio.timeout(connect_timeout_s):
            reader, writer = await asyncio.open_connection(
                host, port, local_addr=(source_ip, 0) if source_ip else None
            )
    except (OSError, TimeoutError) as exc:
        raise NotSent(_describe(exc, "connect")) from exc
    try:
        async with asyncio.timeout(timeout_s):
            writer.write(encode_request(method, host, port, path, body, headers))
            await writer.drain()
            status, length = parse_head(await reader.readuntil(b"\r\n\r\n"))
            if length is None:  # raftkv always sends one; without it, the end is guesswork
                raise ValueError("reply without Content-Length")
            reply = Reply(status, await reader.readexactly(length))
        return reply
    except (OSError, TimeoutError, ValueError, EOFError, asyncio.LimitOverrunError) as exc:
        raise MaybeSent(_describe(exc, "reply")) from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            # Bounded: a paused peer must not hold the client past its deadline.
            async with asyncio.timeout(0.2):
                await writer.wait_closed()


def _describe(exc: BaseException, stage: str) -> str:
    if isinstance(exc, TimeoutError):
        return f"{stage}_timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, EOFError):
        return "closed"
    if isinstance(exc, ValueError | asyncio.LimitOverrunError):
        return "bad_reply"
    return f"{stage}_error"
