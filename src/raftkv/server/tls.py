"""HTTPS for the API, and how a node proves it is a member when it calls another node's API.

Rules:
- `tls.http` (cert, key) turns the API into HTTPS; TLS 1.2 is the floor. With `tls.http.client_ca`
  every client must present a certificate chaining to that CA (or to the cluster CA, which is
  how members call each other). Without it, a client certificate is optional: clients
  authenticate with passwords or tokens (auth), members with their peer certificate.
- Node-to-node HTTP (forwarding, status probes) dials `https://` when `tls.http` is set, verifies
  the other node's HTTP certificate against `tls.http.ca`, else the cluster CA (`tls.peer.ca`),
  else the system's CAs, with host-name checking (`raftkv certs init --hosts` puts the hosts in
  it), and presents this node's PEER certificate (with `tls.peer`), whose URI SAN
  `raftkv://node/<id>` names it.
- SIGHUP re-reads the HTTPS files into the live listener (`reload_server_context`), and the
  peer certificate (and CA) into every live node-to-node client context
  (`reload_client_contexts`: forwarding, status probes, the membership calls), so a certificate
  is rotated without a restart (the peer transport reloads on the same signal). Connections
  made from then on present the new certificate; pooled ones keep theirs until they close.
- `X-Raftkv-Forwarded-By: <id>` (FORWARDED_HEADER) is believed only when `forwarded_by` says so:
  with peer TLS, only on a connection whose verified client certificate names that same node id
  — from anyone else the header is ignored (the request is handled as any client's). Without
  peer TLS there is nothing to check a claim against, so the header is believed as before;
  that is the documented limit of running without TLS. The header grants no rights in either
  case: a forwarded write carries the client's own Authorization, checked by the leader.
  A write forwarded over the peer link (peer_forward.py) is believed forwarded by the link's
  member, whose id the transport authenticated (Hello against the membership, and the
  certificate with peer TLS); it grants no rights either.
"""

from __future__ import annotations

import ssl
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from raftkv.server.forward import FORWARDED_HEADER
from raftkv.transport.tls import TlsConfigError, TlsFiles, node_ids_of

if TYPE_CHECKING:
    from raftkv.server.config import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class HttpTlsFiles:
    """The API's certificate and key; `client_ca` set = client certificates are required."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    ca: Path | None = None  # issuer of the nodes' HTTP certificates (node-to-node calls)


def scheme(settings: Settings) -> str:
    return "https" if settings.tls_http is not None else "http"


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The HTTPS listener's context, or None for plain HTTP. Raises TlsConfigError."""
    files = settings.tls_http
    if files is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"tls.http.cert/key: {files.cert} and {files.key} cannot be loaded as a pair ({exc})"
        ) from exc
    cas = [("tls.http.client_ca", files.client_ca)] if files.client_ca else []
    if settings.tls_peer is not None:
        cas.append(("tls.peer.ca", settings.tls_peer.ca))  # members present their peer cert
    for field, path in cas:
        try:
            ctx.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(f"{field}: {path} is not a PEM CA bundle ({exc})") from exc
    if files.client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif cas:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def reload_server_context(ctx: ssl.SSLContext, settings: Settings) -> None:
    """Re-read `tls.http.cert/key` (and the CAs) into the listener's live context: handshakes
    from now on use the new files, established connections keep theirs. Raises TlsConfigError
    (the context then still holds the old pair: `load_cert_chain` replaces it only on success).
    A CA can be added this way, not removed (that needs a restart)."""
    fresh = server_context(settings)  # validates everything before touching the live context
    files = settings.tls_http
    assert fresh is not None and files is not None
    ctx.load_cert_chain(files.cert, files.key)
    for path in (files.client_ca, settings.tls_peer.ca if settings.tls_peer else None):
        if path is not None:
            ctx.load_verify_locations(cafile=path)


# Every context node_client_context made that is still in use (reload_client_contexts).
_CLIENT_CONTEXTS: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()


def node_client_context(settings: Settings) -> ssl.SSLContext | None:
    """For this node's calls to other nodes' APIs; None when the API is plain HTTP."""
    if settings.tls_http is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks host names
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_client_files(ctx, settings)
    _CLIENT_CONTEXTS.add(ctx)
    return ctx


def _load_client_files(ctx: ssl.SSLContext, settings: Settings) -> None:
    assert settings.tls_http is not None
    peer: TlsFiles | None = settings.tls_peer
    ca = settings.tls_http.ca or (peer.ca if peer is not None else None)
    try:
        if ca is not None:
            ctx.load_verify_locations(cafile=ca)
        else:
            ctx.load_default_certs()
        if peer is not None:
            ctx.load_cert_chain(peer.cert, peer.key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"tls.http.ca / tls.peer: cannot load {ca or 'the system CAs'} or the peer "
            f"certificate for node-to-node HTTPS ({exc})"
        ) from exc


def reload_client_contexts(settings: Settings) -> int:
    """SIGHUP: re-read the peer certificate and the CA into every live node-to-node client
    context; returns how many. Raises TlsConfigError, and then changes none of them (the
    files are checked on a fresh context first). A CA can be added this way, not removed."""
    if settings.tls_http is None:
        return 0
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _load_client_files(probe, settings)  # validates before touching the live contexts
    live = list(_CLIENT_CONTEXTS)
    for ctx in live:
        _load_client_files(ctx, settings)
    return len(live)


def verified_node_ids(request: web.BaseRequest) -> list[str]:
    """Node ids named by the client certificate of `request`'s connection, if it presented a
    valid one (the TLS layer only hands out certificates it verified)."""
    transport = request.transport
    if transport is None:
        return []
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return []
    return node_ids_of(ssl_object.getpeercert())


def forwarded_by(request: web.BaseRequest, settings: Settings) -> str | None:
    """The member that forwarded `request`, if the claim in FORWARDED_HEADER is to be believed."""
    peer = getattr(request, "forwarded_by_peer", None)
    if isinstance(peer, str):
        return peer  # it came over that member's authenticated peer link (peer_forward.py)
    claimed = request.headers.get(FORWARDED_HEADER)
    if claimed is None:
        return None
    if settings.tls_peer is None:
        return claimed  # nothing to check against (see the module rules)
    # The cluster CA issues peer certificates to members only: a certificate naming the claimed
    # id proves the claim (members added later included).
    if claimed in verified_node_ids(request):
        return claimed
    log.info("ignoring unproven forwarded-by claim", claimed=claimed, remote=request.remote)
    return None
