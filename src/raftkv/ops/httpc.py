"""A tiny JSON-over-HTTP client for the operator tools (inspector, benchmark set-up, compare).

Rules:
- Every call returns a `Reply` (status, decoded JSON or None, error words or None); it never
  raises for network trouble, because the tools report unreachable nodes rather than crash.
- aiohttp silently re-sends an idempotent request once after the server drops a pooled
  connection (ARCHITECTURE.md §4.7). Harmless for these tools' reads; for the writes of the
  inspector's round trip a duplicated PUT/DELETE at worst repeats an idempotent effect, and
  nothing here records a history for checking.
- Addresses are "host:port" (as the cluster reports them) or full URLs. A bare "host:port" is
  https when the session was made with an SSL context, else http.
- With auth on, the session sends the operator's `Authorization` header on every request
  (`raftkv inspect --user/--token`, cli/connection.py); it is never part of a report.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import weakref
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import msgspec

DEFAULT_TIMEOUT_S: Final = 3.0


@dataclass(frozen=True, slots=True)
class Reply:
    status: int  # 0 when no HTTP answer came back
    body: Any  # decoded JSON, or None
    error: str | None  # why there is no usable answer (network error, non-JSON), else None
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300

    @property
    def code(self) -> str | None:
        """The API's error `code`, when the body carries one."""
        if isinstance(self.body, dict):
            code = self.body.get("code")
            return code if isinstance(code, str) else None
        return None


# The scheme of each session made by make_session (https when it has an SSL context).
_SCHEMES: weakref.WeakKeyDictionary[aiohttp.ClientSession, str] = weakref.WeakKeyDictionary()


def base_url(address: str, scheme: str = "http") -> str:
    address = address.rstrip("/")
    return address if "://" in address else f"{scheme}://{address}"


def kv_path(key: str) -> str:
    return "/kv/" + quote(key, safe="")


# Said after "no node answered" over plain HTTP: an HTTPS listener just hangs up on it.
HTTPS_HINT = " (if the cluster serves HTTPS, give --cacert FILE)"


def session_tls(session: aiohttp.ClientSession) -> bool:
    """Whether `session` speaks https to bare "host:port" addresses."""
    return _SCHEMES.get(session) == "https"


def make_session(
    timeout_s: float = DEFAULT_TIMEOUT_S,
    limit: int = 100,
    *,
    ssl_context: ssl.SSLContext | None = None,
    auth_header: str | None = None,
) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=limit, ssl=ssl_context if ssl_context is not None else True
        ),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        headers={"Authorization": auth_header} if auth_header else None,
        trust_env=False,
    )
    _SCHEMES[session] = "https" if ssl_context is not None else "http"
    return session


async def request(
    session: aiohttp.ClientSession,
    method: str,
    address: str,
    path: str,
    *,
    data: bytes | str | None = None,
    json: object | None = None,
    params: dict[str, str] | None = None,
) -> Reply:
    url = base_url(address, _SCHEMES.get(session, "http")) + path
    body = msgspec.json.encode(json) if json is not None else data
    headers = {"Content-Type": "application/json"} if json is not None else None
    start = time.perf_counter()
    try:
        async with session.request(
            method, url, data=body, params=params, headers=headers, allow_redirects=False
        ) as resp:
            raw = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        elapsed = (time.perf_counter() - start) * 1000
        return Reply(0, None, _words(exc), elapsed)
    elapsed = (time.perf_counter() - start) * 1000
    try:
        decoded = msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError:
        return Reply(status, None, f"non-JSON reply ({len(raw)} bytes)", elapsed)
    return Reply(status, decoded, None, elapsed)


def _words(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection refused"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
