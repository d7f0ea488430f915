"""Forwarding a write from a follower to the leader: at most once, re-sent only with a session.

Rules:
- A forwarded write is APPLIED AT MOST ONCE. Without a session there is no deduplication, so a
  second copy of a PUT/DELETE could be applied twice (e.g. a DELETE after a newer PUT by
  someone else): such a write is sent at most once.
  * The request goes through `forward_client.LeaderClient`, our own small HTTP/1.1 client on
    httptools, which never re-sends anything by itself and attributes every failure to
    `NotSent` or `MaybeSent` (its module rules). aiohttp's ClientSession is not used for
    forwarding: it re-sends an idempotent request (PUT and DELETE are) once when it fails with
    ClientOSError or ServerDisconnectedError, on any connection, fresh or pooled (aiohttp 3.14
    client.py: `retry_persistent_connection`; `test_plain_aiohttp_session_would_send_twice`
    keeps watching it), and it cost ~3x the CPU per forward of the lean client.
  * Connections to the leader are pooled and kept alive, one request at a time each (no
    pipelining). Attribution stays conservative: a failed connect (refused, timed out, TLS
    handshake or certificate failure, no free slot within the connect timeout) means nothing
    was sent -> 503 `leader_unreachable`, safe to retry; anything after a connection was taken
    -- fresh or pooled -> 504 `outcome_unknown`, because on a pooled connection "server closed
    the connection" may mean the leader closed it idle before reading the request OR after
    applying it.
  * The one re-send: a request that carries a session (`Raftkv-Session` + `Raftkv-Seq`) and
    failed after a connection was taken is sent once more, on a fresh connection, because the
    leader's session table answers a repeated seq with the remembered reply instead of applying
    it again (Raft thesis §6.3, kv/sessions.py). A request without a session is never re-sent.
  * Pooled connections are closed after `idle_timeout_s`, well before the leader's own
    keep-alive timeout, so the leader rarely closes one under us (a race that would otherwise
    turn into a 504 for a write without a session).
  * Redirects are not followed (a 3xx is passed back as any reply); no proxy is used.
- The request goes with every header in FORWARDED_REQUEST_HEADERS (the client's Authorization,
  preconditions, session): the leader authenticates the client itself. The leader's reply
  (status, body, Content-Type, Retry-After, ETag, WWW-Authenticate, Raftkv-* headers) is
  passed back unchanged.
- With HTTPS (`tls.http`) the forward is an HTTPS request that verifies the leader's certificate
  and presents this node's peer certificate (server/tls.py); a failed handshake is a failed
  connect: nothing was sent.
- A forwarded request carries FORWARDED_HEADER; a node receiving one never forwards it again
  (a leader that just lost leadership answers 503 `not_leader`): no forwarding loops.
- With `server.forward_over_peer`, PUT and DELETE /kv/{key} travel as peer frames instead
  (`peer_forward.py`) under the same rules; this module is the fallback for anything the link
  did not send, and the transport of a session write's one re-send (`resend=True`).
- Outgoing connections bind their source address to this node's host, so per-address network
  partitions (nftables on 127.0.0.x) cut forwarding like they cut Raft traffic.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from typing import Final

import aiohttp
import structlog
from aiohttp import web

from raftkv.server.errors import ApiError
from raftkv.server.fast_request import FastRequest
from raftkv.server.forward_client import (
    LeaderClient,
    MaybeSent,
    NotSent,
    TimedOut,
    request_head,
)

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
_NO_BODY_METHODS: Final = frozenset({"GET", "HEAD"})  # no Content-Length unless a body


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
) -> aiohttp.TCPConnector:
    """For the aiohttp sessions of status probes and membership calls (reads, not forwards)."""
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
        self._client = LeaderClient(
            source_ip=source_ip,
            connect_timeout_s=connect_timeout_s,
            idle_timeout_s=idle_timeout_s,
            ssl_context=ssl_context,
            max_connections=_MAX_CONNECTIONS,
        )

    async def close(self) -> None:
        await self._client.close()

    async def forward(
        self,
        request: web.Request,
        body: bytes,
        leader_id: str,
        leader_http: str,
        *,
        resend: bool = False,
    ) -> web.Response:
        """`resend`: this is the one re-send of a session write that may have been sent over
        the peer link (peer_forward.py): on a fresh connection, and never re-sent again."""
        headers = [(FORWARDED_HEADER, self._node_id)]
        req_headers = request.headers
        for name in FORWARDED_REQUEST_HEADERS:
            if (value := req_headers.get(name)) is not None:
                headers.append((name, value))
        method = request.method
        if body or method not in _NO_BODY_METHODS:
            headers.append(("Content-Length", str(len(body))))
        try:
            head = request_head(method, request_target(request), leader_http, headers)
        except ValueError as exc:
            raise _unreachable(leader_id, leader_http, f"bad request to forward: {exc}") from exc
        # Deduplicated by the leader's session table, so a second send cannot apply twice.
        has_session = "Raftkv-Session" in req_headers and "Raftkv-Seq" in req_headers
        deadline = asyncio.get_running_loop().time() + self._total_timeout_s
        client = self._client
        try:
            try:
                reply = await client.request(
                    leader_http, head, body, deadline=deadline, fresh=resend
                )
            except TimedOut:
                raise  # the request's time is up: nothing is re-sent
            except MaybeSent as exc:
                if not has_session or resend:
                    raise
                log.info("re-sending a session write", leader=leader_id, error=str(exc))
                try:
                    reply = await client.request(
                        leader_http, head, body, deadline=deadline, fresh=True
                    )
                except NotSent as again:
                    raise exc from again  # the first send may have applied
        except NotSent as exc:
            if resend:  # the first send (over the peer link) may have applied
                raise outcome_unknown(leader_id, leader_http, exc) from exc
            raise _unreachable(leader_id, leader_http, str(exc)) from exc
        except MaybeSent as exc:
            raise outcome_unknown(leader_id, leader_http, exc) from exc
        return web.Response(
            status=reply.status, body=reply.body, headers=passed_back(reply.headers)
        )


def passed_back(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The leader's reply headers a follower passes back to the client (see the rules)."""
    return {
        name: value
        for name, value in headers
        if (lower := name.lower()) in _PASSED_BACK_HEADERS or lower.startswith(_PASSED_BACK_PREFIX)
    }


def request_target(request: web.Request) -> str:
    """The request target to send: path and query exactly as the client encoded them."""
    if isinstance(request, FastRequest):
        return request.raw_path_qs  # as received, without building a URL
    return request.rel_url.raw_path_qs


def outcome_unknown(leader_id: str, leader_http: str, exc: Exception) -> ApiError:
    """504 `outcome_unknown`: a forward may have been sent and no answer came."""
    log.warning("forwarding failed after sending", leader=leader_id, error=repr(exc))
    return ApiError(
        504,
        "outcome_unknown",
        "connection to the leader failed after the request was sent; "
        "the write may or may not have been applied",
        leader=leader_id,
        leader_http=leader_http,
    )


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
