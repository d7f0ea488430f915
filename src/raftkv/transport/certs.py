"""Certificates for a raftkv cluster: one CA, per node a peer and an HTTP certificate, and a
client certificate for operators (`raftkv certs init|add-node` is the front end).

Rules:
- A node's identity is a URI SAN `raftkv://node/<node id>` (`NODE_URI_PREFIX`) in its PEER
  certificate. A URI, not a DNS name: a node id such as `node-1` must never be confused with a
  host that happens to be called `node-1`, and no public CA issues `raftkv://` URIs. The peer
  certificate also carries the `--hosts` as DNS/IP SANs, and both serverAuth and clientAuth
  usages, because each node dials its peers and is dialled by them with the same certificate.
- The HTTP certificate carries only the hosts (serverAuth, clientAuth for node-to-node HTTP);
  the operator client certificate carries the user name as CN and a URI SAN
  `raftkv://user/<name>` (clientAuth only).
- Keys are ECDSA P-256 (handshakes are cheap); private keys are written 0600, never
  overwritten: existing files are an error naming them, unless `force`.
- The layout under `out` is fixed (see `CertLayout`), so configs, compose secrets and
  Kubernetes Secrets can name files without asking.
- Every misuse raises `CertError` with a message that says what to do.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NODE_URI_PREFIX: Final = "raftkv://node/"
USER_URI_PREFIX: Final = "raftkv://user/"
DEFAULT_CA_DAYS: Final = 3650
DEFAULT_LEAF_DAYS: Final = 825
DEFAULT_CLIENT_USER: Final = "root"
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_HOST_RE: Final = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*\.?")
_BACKDATE: Final = dt.timedelta(minutes=5)  # tolerate small clock skew between machines


class CertError(Exception):
    """A certificate operation cannot be done as asked; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class CertLayout:
    """Where each file lives under the output directory."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    def peer_cert(self, node_id: str) -> Path:
        return self.root / node_id / "peer.crt"

    def peer_key(self, node_id: str) -> Path:
        return self.root / node_id / "peer.key"

    def http_cert(self, node_id: str) -> Path:
        return self.root / node_id / "http.crt"

    def http_key(self, node_id: str) -> Path:
        return self.root / node_id / "http.key"

    def client_cert(self, user: str) -> Path:
        return self.root / "client" / f"{user}.crt"

    def client_key(self, user: str) -> Path:
        return self.root / "client" / f"{user}.key"

    def node_files(self, node_id: str) -> list[Path]:
        return [
            self.peer_cert(node_id),
            self.peer_key(node_id),
            self.http_cert(node_id),
            self.http_key(node_id),
        ]


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key, PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes


def node_uri(node_id: str) -> str:
    return NODE_URI_PREFIX + node_id


def node_ids_in_cert(cert: x509.Certificate) -> list[str]:
    """The node ids named by `raftkv://node/<id>` URI SANs of `cert` (usually one)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return [u[len(NODE_URI_PREFIX) :] for u in uris if u.startswith(NODE_URI_PREFIX)]


def check_name(kind: str, name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise CertError(
            f"{kind} {name!r} is not valid: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _san_hosts(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
            continue
        except ValueError:
            pass
        if not _HOST_RE.fullmatch(host) or len(host) > 253:
            raise CertError(f"host {host!r} is neither an IP address nor a DNS name")
        names.append(x509.DNSName(host))
    return names


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _validity(days: int, now: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    if days < 1:
        raise CertError(f"--days must be at least 1 (got {days})")
    start = (now if now is not None else dt.datetime.now(dt.UTC)) - _BACKDATE
    return start, start + _BACKDATE + dt.timedelta(days=days)


def make_ca(
    cluster_name: str, *, days: int = DEFAULT_CA_DAYS, now: dt.datetime | None = None
) -> Issued:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"raftkv CA {cluster_name}")])
    start, end = _validity(days, now)
    pub = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _load_ca(ca: Issued) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca.cert_pem)
        key = serialization.load_pem_private_key(ca.key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertError(f"the CA certificate or key cannot be read: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError("the CA key is not an ECDSA key made by `raftkv certs init`")
    cert_pub = cert.public_key()
    if (
        not isinstance(cert_pub, ec.EllipticCurvePublicKey)
        or key.public_key().public_numbers() != cert_pub.public_numbers()
    ):
        raise CertError("the CA key does not belong to the CA certificate")
    return cert, key


def issue_leaf(
    ca: Issued,
    *,
    common_name: str,
    uris: Sequence[str] = (),
    hosts: Sequence[str] = (),
    server: bool,
    client: bool,
    days: int = DEFAULT_LEAF_DAYS,
    now: dt.datetime | None = None,
) -> Issued:
    """A leaf certificate signed by `ca` with the given SANs and usages."""
    ca_cert, ca_key = _load_ca(ca)
    key = _new_key()
    start, end = _validity(days, now)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += _san_hosts(hosts)
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_peer(
    ca: Issued,
    node_id: str,
    hosts: Sequence[str],
    *,
    days: int = DEFAULT_LEAF_DAYS,
    now: dt.datetime | None = None,
) -> Issued:
    """Node `node_id`'s peer certificate: URI SAN `raftkv://node/<id>` + hosts, both usages."""
    check_name("node id", node_id)
    return issue_leaf(
        ca,
        common_name=node_id,
        uris=[node_uri(node_id)],
        hosts=hosts,
        server=True,
        client=True,
        days=days,
        now=now,
    )


def issue_http(ca: Issued, node_id: str, hosts: Sequence[str], *, days: int) -> Issued:
    check_name("node id", node_id)
    return issue_leaf(ca, common_name=node_id, hosts=hosts, server=True, client=True, days=days)


def issue_client(ca: Issued, user: str, *, days: int) -> Issued:
    check_name("user", user)
    return issue_leaf(
        ca, common_name=user, uris=[USER_URI_PREFIX + user], server=False, client=True, days=days
    )


# ---- files ---------------------------------------------------------------------------------


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise CertError(
            "refusing to overwrite existing files: "
            + ", ".join(existing)
            + " (remove them, choose another --out, or pass --force)"
        )


def _write(path: Path, data: bytes, *, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_node(
    layout: CertLayout, ca: Issued, node_id: str, hosts: Sequence[str], days: int
) -> None:
    peer = issue_peer(ca, node_id, hosts, days=days)
    http = issue_http(ca, node_id, hosts, days=days)
    _write(layout.peer_cert(node_id), peer.cert_pem, private=False)
    _write(layout.peer_key(node_id), peer.key_pem, private=True)
    _write(layout.http_cert(node_id), http.cert_pem, private=False)
    _write(layout.http_key(node_id), http.key_pem, private=True)


def _check_hosts(hosts: Sequence[str]) -> list[str]:
    cleaned = [h.strip() for h in hosts if h.strip()]
    if not cleaned:
        raise CertError("--hosts needs at least one host name or IP address (e.g. localhost)")
    _san_hosts(cleaned)  # validates
    return cleaned


def init_certs(
    out: Path,
    nodes: Sequence[str],
    hosts: Sequence[str],
    *,
    cluster_name: str = "raftkv",
    client_user: str = DEFAULT_CLIENT_USER,
    days: int = DEFAULT_LEAF_DAYS,
    ca_days: int = DEFAULT_CA_DAYS,
    force: bool = False,
) -> list[Path]:
    """Make the CA, every node's certificates and the operator client certificate under `out`.

    Returns the files written. Nothing is written if any check fails."""
    layout = CertLayout(out)
    if not nodes:
        raise CertError("--nodes needs at least one node id (e.g. node-1,node-2,node-3)")
    for n in nodes:
        check_name("node id", n)
    if len(set(nodes)) != len(nodes):
        raise CertError(f"--nodes lists a node twice: {','.join(nodes)}")
    check_name("user", client_user)
    hosts = _check_hosts(hosts)
    files = [layout.ca_cert, layout.ca_key]
    for n in nodes:
        files += layout.node_files(n)
    files += [layout.client_cert(client_user), layout.client_key(client_user)]
    _refuse_existing(files, force)
    ca = make_ca(cluster_name, days=ca_days)
    _write(layout.ca_cert, ca.cert_pem, private=False)
    _write(layout.ca_key, ca.key_pem, private=True)
    for n in nodes:
        _write_node(layout, ca, n, hosts, days)
    client = issue_client(ca, client_user, days=days)
    _write(layout.client_cert(client_user), client.cert_pem, private=False)
    _write(layout.client_key(client_user), client.key_pem, private=True)
    return files


def load_ca_files(layout: CertLayout) -> Issued:
    missing = [str(p) for p in (layout.ca_cert, layout.ca_key) if not p.is_file()]
    if missing:
        raise CertError(
            f"no CA in {layout.root}: missing {', '.join(missing)} "
            "(run `raftkv certs init` first, or point --out at the directory it wrote)"
        )
    ca = Issued(layout.ca_cert.read_bytes(), layout.ca_key.read_bytes())
    _load_ca(ca)  # validates
    return ca


def add_node(
    out: Path,
    node_id: str,
    hosts: Sequence[str],
    *,
    days: int = DEFAULT_LEAF_DAYS,
    force: bool = False,
) -> list[Path]:
    """Issue `node_id`'s peer and HTTP certificates from the CA already under `out`."""
    layout = CertLayout(out)
    check_name("node id", node_id)
    hosts = _check_hosts(hosts)
    ca = load_ca_files(layout)
    files = layout.node_files(node_id)
    _refuse_existing(files, force)
    _write_node(layout, ca, node_id, hosts, days)
    return files


def add_client(
    out: Path, user: str, *, days: int = DEFAULT_LEAF_DAYS, force: bool = False
) -> list[Path]:
    """Issue one more client certificate (CN = `user`) from the CA under `out`."""
    layout = CertLayout(out)
    check_name("user", user)
    ca = load_ca_files(layout)
    files = [layout.client_cert(user), layout.client_key(user)]
    _refuse_existing(files, force)
    client = issue_client(ca, user, days=days)
    _write(files[0], client.cert_pem, private=False)
    _write(files[1], client.key_pem, private=True)
    return files
