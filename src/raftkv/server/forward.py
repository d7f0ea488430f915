"""Forwarding a write from a follower to the leader: at most once, re-sent only with a session.

Rules:
- A forwarded write is APPLIED AT MOST ONCE. Without a session there is no deduplication, so a
  second copy of a PUT/DELETE could be applied twice (e.g. a DELETE after a newer PUT by
  someone else): such a write is sent at most once. Every layer that re-sends on its own is
  switched off:
  * aiohttp's ClientSession re-sends an idempotent request (PUT and DELETE are) once when it
    fails with ClientOSError or ServerDisconnectedError -- on ANY connection, fresh or pooled
    (aiohttp 3.14 client.py: `retry_persistent_connection = self._retry_connection and method
    in IDEMPOTENT_METHODS`, then `except (ClientOSError, ServerDisconnectedError): ...
    continue`). That loop sits OUTSIDE the client middleware chain, and the only exceptions it
    re-sends on are those two types. `_classify_failures`, our middleware, converts every
    failure of a send into `_NotSent`/`_MaybeSent`, which derive from neither (nor from
    ClientError or OSError), so the loop re-raises them without looping. A second send is thus
    impossible whatever the failure.
  * Connections to the leader are pooled and kept alive (a fresh connection per forward cost
    ~3.5x the throughput of the same load sent to the leader). Attribution stays conservative:
    a failed connect (ClientConnectorError, ConnectionTimeoutError) can only happen on a new
    connection and means nothing was sent -> 503 `leader_unreachable`, safe to retry; anything
    after a connection was taken -- fresh or pooled -> 504 `outcome_unknown`, because on a
    pooled connection "server closed the connection" may mean the leader closed it idle before
    reading the request OR after applying it.
  * The one re-send: a request that carries a session (`Raftkv-Session` + `Raftkv-Seq`) and
    failed after a connection was taken is sent once more, because the leader's session table
    answers a repeated seq with the remembered reply instead of applying it again (Raft thesis
    §6.3, kv/sessions.py). A request without a session is never re-sent.
  * Pooled connections are closed after `idle_timeout_s`, well before the leader's own
    keep-alive timeout, so the leader rarely closes one under us (a race that would otherwise
    turn into a 504 for a write without a session).
  * Redirects are not followed; no proxy is used (trust_env is off).
- The request goes with every header in FORWARDED_REQUEST_HEADERS (the client's Authorization,
  preconditions, session): the leader authenticates the client itself. The leader's reply
  (status, body, Content-Type, Retry-After, ETag, WWW-Authenticate, Raftkv-* headers) is
  passed back unchanged.
- With HTTPS (`tls.http`) the forward is an HTTPS request that verifies the leader's certificate
  and presents this node's peer certificate (server/tls.py); a failed handshake is a failed
  connect (aiohttp's certificate errors are ClientConnectorErrors): nothing was sent.
- A forwarded request carries FORWARDED_HEADER; a node receiving one never forwards it again
  (a leader that just lost leadership answers 503 `not_leader`): no forwarding loops.
- Outgoing connections bind their source address to this node's host, so per-address network
  partitions (nftables on 127.0.0.x) cut forwarding like they cut Raft traffic.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from typing import Final

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from raftkv.server.errors import ApiError

log = structlog.get_logger(__name__)

FORWARDED_HEADER: Final = "X-Raftkv-Forwarded-By"
# Request headers that change what a write means or who makes it: forwarding without them
# would turn a conditional or exactly-once write into a blind one, or an authenticated one into
# an anonymous one (the leader checks the credentials; FORWARDED_HEADER grants nothing).
FORWARDED_REQUEST_HEADERS: Final = (
    "Content-Type",
    "Accept",
    "Authorization",
    "If-Match",
    "If-None-Match",
    "Raftkv-Session",
    "Raftkv-Seq",
    "Raftkv-Ack",
)
_PASSED_BACK_HEADERS: Final = frozenset({"content-type", "retry-after", "etag", "www-authenticate"})
_PASSED_BACK_PREFIX: Final = "raftkv-"  # the API's own reply headers (revisions, sessions)
_MAX_CONNECTIONS: Final = 256  # concurrent forwards; waiting for a slot counts as connecting


class _NotSent(Exception):
    """The connection to the leader could not be made: not one byte of the request was sent."""


class _MaybeSent(Exception):
    """The connection was up when the request failed: the leader may have applied it."""


async def _classify_failures(
    req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    # Runs inside aiohttp's retry loop, around connect + send + reading the status line.
    try:
        return await handler(req)
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise _NotSent(str(exc) or type(exc).__name__) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise _MaybeSent(str(exc) or type(exc).__name__) from exc


async def resolve_source_ip(host: str) -> str | None:
    """The IP to bind outgoing connections to, or None (wildcard or unresolvable host)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.warning(
            "cannot resolve own host; not binding outgoing connections", host=host, error=str(exc)
        )
        return None
    # Prefer IPv4: "localhost" may list ::1 first while peers are dialled over IPv4.
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    ip = str(infos[0][4][0])
    return None if ipaddress.ip_address(ip).is_unspecified else ip


def make_connector(
    source_ip: str | None,
    *,
    force_close: bool,
    ssl_context: ssl.SSLContext | None = None,
    idle_timeout_s: float | None = None,
) -> aiohttp.TCPConnector:
    if idle_timeout_s is not None:
        # Only meaningful with pooling; aiohttp refuses it together with force_close.
        return aiohttp.TCPConnector(
            local_addr=(source_ip, 0) if source_ip else None,
            keepalive_timeout=idle_timeout_s,
            limit=_MAX_CONNECTIONS,
            ssl=ssl_context if ssl_context is not None else True,
        )
    return aiohttp.TCPConnector(
        local_addr=(source_ip, 0) if source_ip else None,
        force_close=force_close,
        limit=_MAX_CONNECTIONS,
        ssl=ssl_context if ssl_context is not None else True,
    )


class Forwarder:
    """Sends a client's write to the leader (once, unless it has a session) and relays the reply."""

    def __init__(
        self,
        node_id: str,
        *,
        source_ip: str | None,
        connect_timeout_s: float,
        total_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout_s: float = 15.0,
    ) -> None:
        if connect_timeout_s >= total_timeout_s:
            # Keeps the attribution exact: an expiry of the total timeout is always after connect.
            raise ValueError("connect timeout must be shorter than the total timeout")
        self._node_id = node_id
        self._total_timeout_s = total_timeout_s
        self._scheme = "https" if ssl_context is not None else "http"
        self._session = aiohttp.ClientSession(
            connector=make_connector(
                source_ip,
                force_close=False,
                ssl_context=ssl_context,
                idle_timeout_s=idle_timeout_s,
            ),
            timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout_s),
            middlewares=(_classify_failures,),
            auto_decompress=False,
            trust_env=False,
        )

    async def close(self) -> None:
        await self._session.close()

    async def forward(
        self, request: web.Request, body: bytes, leader_id: str, leader_http: str
    ) -> web.Response:
        try:
            url = URL(f"{self._scheme}://{leader_http}{request.rel_url.raw_path_qs}", encoded=True)
        except ValueError as exc:
            raise _unreachable(leader_id, leader_http, f"bad leader address: {exc}") from exc
        headers = {FORWARDED_HEADER: self._node_id}
        for name in FORWARDED_REQUEST_HEADERS:
            if (value := request.headers.get(name)) is not None:
                headers[name] = value
        # Deduplicated by the leader's session table, so a second send cannot apply twice.
        has_session = "Raftkv-Session" in headers and "Raftkv-Seq" in headers
        first_failure: _MaybeSent | None = None
        try:
            async with asyncio.timeout(self._total_timeout_s):
                while True:
                    try:
                        status, payload, passed = await self._send(
                            request.method, url, body, headers
                        )
                        break
                    except _NotSent as exc:
                        if first_failure is not None:
                            raise first_failure from exc  # the first send may have applied
                        raise
                    except _MaybeSent as exc:
                        if not has_session or first_failure is not None:
                            raise
                        first_failure = exc
                        log.info("re-sending a session write", leader=leader_id, error=str(exc))
        except _NotSent as exc:
            raise _unreachable(leader_id, leader_http, str(exc)) from exc
        except (_MaybeSent, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("forwarding failed after sending", leader=leader_id, error=repr(exc))
            raise ApiError(
                504,
                "outcome_unknown",
                "connection to the leader failed after the request was sent; "
                "the write may or may not have been applied",
                leader=leader_id,
                leader_http=leader_http,
            ) from exc
        return web.Response(status=status, body=payload, headers=passed)

    async def _send(
        self, method: str, url: URL, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        async with self._session.request(
            method, url, data=body, headers=headers, allow_redirects=False
        ) as resp:
            payload = await resp.read()
            passed = {
                h: v
                for h, v in resp.headers.items()
                if h.lower() in _PASSED_BACK_HEADERS or h.lower().startswith(_PASSED_BACK_PREFIX)
            }
            return resp.status, payload, passed


def _unreachable(leader_id: str, leader_http: str, detail: str) -> ApiError:
    log.info("leader unreachable for forwarding", leader=leader_id, error=detail)
    return ApiError(
        503,
        "leader_unreachable",
        "cannot reach the leader; the write was not sent",
        headers={"Retry-After": "1"},
        leader=leader_id,
        leader_http=leader_http,
    )
