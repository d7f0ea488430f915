"""TLS options of both clients against a local HTTPS server with trustme certificates."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from raftkv.client import AsyncClient, Client, RaftkvError, TLSError
from tests.unit.client.fake_server import Server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def https_server(ca: trustme.CA, *, client_certs: bool = False, host: str = "127.0.0.1") -> Server:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(ctx)
    if client_certs:
        ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return Server(ctx)


@pytest.fixture
def server(ca: trustme.CA) -> Iterator[Server]:
    s = https_server(ca)
    yield s
    s.close()


def test_both_clients_verify_the_server_with_the_given_ca(server: Server, ca_file: Path) -> None:
    with Client([f"127.0.0.1:{server.port}"], ca=ca_file) as kv:
        assert kv.get("k").value == "v"

    async def main() -> None:
        async with AsyncClient([f"127.0.0.1:{server.port}"], ca=ca_file) as kv:
            assert (await kv.get("k")).value == "v"

    asyncio.run(main())
    assert server.requests == ["GET /kv/k", "GET /kv/k"]


def test_an_unknown_ca_is_a_tls_error_at_once(server: Server) -> None:
    endpoint = f"https://127.0.0.1:{server.port}"
    with Client([endpoint], timeout=30) as kv, pytest.raises(TLSError):
        kv.get("k")

    async def main() -> None:
        async with AsyncClient([endpoint], timeout=30) as kv:
            await kv.get("k")

    with pytest.raises(TLSError):
        asyncio.run(main())
    assert server.requests == []


def test_a_certificate_for_another_host_is_refused(ca: trustme.CA, ca_file: Path) -> None:
    other = https_server(ca, host="node-9.example")
    try:
        with Client([f"127.0.0.1:{other.port}"], ca=ca_file) as kv, pytest.raises(TLSError):
            kv.get("k")
    finally:
        other.close()


def test_client_certificates(ca: trustme.CA, ca_file: Path, tmp_path: Path) -> None:
    server = https_server(ca, client_certs=True)
    cert = ca.issue_cert("operator")
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client-key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    endpoint = f"127.0.0.1:{server.port}"
    try:
        with Client([endpoint], ca=ca_file, cert=cert_file, key=key_file) as kv:
            assert kv.get("k").value == "v"
        with Client([endpoint], ca=ca_file, timeout=1) as kv, pytest.raises(RaftkvError):
            kv.get("k")  # no client certificate: the server refuses the handshake
    finally:
        server.close()
    assert server.requests == ["GET /kv/k"]


def test_credentials_are_sent_as_configured(ca_file: Path, server: Server) -> None:
    with Client([f"127.0.0.1:{server.port}"], ca=ca_file, username="ann", password="pw") as kv:
        kv.get("k")
    with Client([f"127.0.0.1:{server.port}"], ca=ca_file, token="t0k") as kv:
        kv.get("k")
    assert server.auth == ["Basic YW5uOnB3", "Bearer t0k"]
