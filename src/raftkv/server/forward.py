"""Forwarding a write from a follower to the leader: sent at most once, never retried.

Rules:
- A forwarded write reaches the leader AT MOST ONCE. Until client sessions exist there is no
  deduplication, so a second copy of a PUT/DELETE could be applied twice (e.g. a DELETE after a
  newer PUT by someone else). Every layer that could re-send is switched off:
  * aiohttp's ClientSession re-sends an idempotent request (PUT and DELETE are) once when it
    fails with ClientOSError or ServerDisconnectedError -- on ANY connection, fresh or pooled
    (aiohttp 3.14 client.py: `retry_persistent_connection = self._retry_connection and method
    in IDEMPOTENT_METHODS`, then `except (ClientOSError, ServerDisconnectedError): ...
    continue`). That loop sits OUTSIDE the client middleware chain, and the only exceptions it
    re-sends on are those two types. `_classify_failures`, our middleware, converts every
    failure of a send into `_NotSent`/`_MaybeSent`, which derive from neither (nor from
    ClientError or OSError), so the loop re-raises them without looping. A second send is thus
    impossible whatever the failure.
  * The connector has `force_close=True`: each forward uses a fresh connection, so a failure
    can always be attributed: a failed connect (ClientConnectorError, ConnectionTimeoutError)
    means nothing was sent -> 503 `leader_unreachable`, safe to retry; anything after the
    connection was up -> 504 `outcome_unknown`. (On a pooled connection a "server closed the
    connection" could mean either.)
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
    source_ip: str | None, *, force_close: bool, ssl_context: ssl.SSLContext | None = None
) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(
        local_addr=(source_ip, 0) if source_ip else None,
        force_close=force_close,
        limit=_MAX_CONNECTIONS,
        ssl=ssl_context if ssl_context is not None else True,
    )


class Forwarder:
    """Sends a client's write to the leader once and relays the reply."""

    def __init__(
        self,
        node_id: str,
        *,
        source_ip: str | None,
        connect_timeout_s: float,
        total_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if connect_timeout_s >= total_timeout_s:
            # Keeps the attribution exact: an expiry of the total timeout is always after connect.
            raise ValueError("connect timeout must be shorter than the total timeout")
        self._node_id = node_id
        self._total_timeout_s = total_timeout_s
        self._scheme = "https" if ssl_context is not None else "http"
        self._session = aiohttp.ClientSession(
            connector=make_connector(source_ip, force_close=True, ssl_context=ssl_context),
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
        try:
            async with asyncio.timeout(self._total_timeout_s):
                async with self._session.request(
                    request.method, url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    payload = await resp.read()
                    status = resp.status
                    passed = {
                        h: v
                        for h, v in resp.headers.items()
                        if h.lower() in _PASSED_BACK_HEADERS
                        or h.lower().startswith(_PASSED_BACK_PREFIX)
                    }
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
