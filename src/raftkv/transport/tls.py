"""TLS contexts for mutual authentication between peers (and reusable for node-to-node HTTP).

Rules:
- Both sides present a certificate signed by the cluster CA (`tls.peer.ca`) and verify the
  other's; TLS 1.2 is the floor. A node's identity is the URI SAN `raftkv://node/<id>` of its
  certificate (`raftkv.transport.certs`); host names are NOT checked (nodes move between
  addresses; the node id is what Raft trusts), so the client side turns `check_hostname` off and
  compares node ids itself, as the server side does with the Hello.
- `PeerTls` holds the current contexts; `reload()` rebuilds them from the files. A connection
  made after a reload uses the new files; established connections keep their session (a
  revoked certificate is cut off by removing the member, or by restarting the node).
  A reload that fails (missing file, key not matching) keeps the old contexts and raises
  `TlsConfigError` naming the file.
- `describe_tls_error` turns an `ssl` failure into words an operator understands (wrong CA,
  expired, plain TCP on a TLS port), for the refusal log line.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftkv.transport.certs import NODE_URI_PREFIX

_PLAIN_TCP_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNEXPECTED_RECORD", "RECORD_LAYER_FAILURE"}
)


class TlsConfigError(Exception):
    """The TLS files cannot be used; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A certificate chain, its private key and the CA bundle that peers must chain to."""

    cert: Path
    key: Path
    ca: Path


def _load_chain(ctx: ssl.SSLContext, files: TlsFiles) -> None:
    for label, path in (("cert", files.cert), ("key", files.key), ("ca", files.ca)):
        if not path.is_file():
            raise TlsConfigError(f"tls.peer.{label}: {path} does not exist or is not a file")
    try:
        ctx.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"tls.peer.cert/key: {files.cert} and {files.key} cannot be loaded as a pair ({exc})"
        ) from exc
    try:
        ctx.load_verify_locations(cafile=files.ca)
    except ssl.SSLError as exc:
        raise TlsConfigError(f"tls.peer.ca: {files.ca} is not a PEM CA bundle ({exc})") from exc


def server_context(files: TlsFiles, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """For accepting peers: our certificate; the client's must chain to the CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, files)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """For dialling peers: our certificate; the server's must chain to the CA (the node id in
    its SAN is compared by the caller, host names are not)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_chain(ctx, files)
    return ctx


def node_ids_of(peercert: Mapping[str, Any] | None) -> list[str]:
    """The node ids named in an `SSLObject.getpeercert()` dict (URI SANs `raftkv://node/<id>`)."""
    if not peercert:
        return []
    sans = peercert.get("subjectAltName", ())
    return [
        str(value)[len(NODE_URI_PREFIX) :]
        for kind, value in sans
        if kind == "URI" and str(value).startswith(NODE_URI_PREFIX)
    ]


def describe_tls_error(exc: BaseException) -> str:
    """Words for the log line of a refused TLS connection."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        msg = exc.verify_message or str(exc)
        if "expired" in msg:
            return f"certificate expired ({msg})"
        if "not yet valid" in msg:
            return f"certificate not yet valid ({msg})"
        if "unable to get local issuer" in msg or "self-signed" in msg or "self signed" in msg:
            return f"certificate not signed by the cluster CA ({msg})"
        return f"certificate rejected: {msg}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason in _PLAIN_TCP_REASONS:
            return f"not TLS: the other side speaks plain TCP ({reason})"
        if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED"):
            return f"no client certificate presented ({reason})"
        if reason in ("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE"):
            return f"the other side rejected our certificate ({reason})"
        if reason == "SSLV3_ALERT_CERTIFICATE_EXPIRED":
            return f"the other side says our certificate expired ({reason})"
        return f"TLS handshake failed: {reason}"
    return f"{type(exc).__name__}: {exc}"


class PeerTls:
    """The current server and client contexts of a node; `reload()` swaps them atomically."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.server, self.client = self._build()

    def _build(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        return server_context(self.files), client_context(self.files)

    def reload(self) -> None:
        """Re-read the files; on error the old contexts stay and `TlsConfigError` is raised."""
        server, client = self._build()
        self.server, self.client = server, client
