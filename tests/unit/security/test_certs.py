"""`raftkv certs`: the files it writes, the SANs and usages, and its refusals."""

from __future__ import annotations

import asyncio
import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from raftkv.cli.main import app
from raftkv.transport.certs import (
    CertError,
    CertLayout,
    add_node,
    init_certs,
    load_ca_files,
    node_ids_in_cert,
)
from raftkv.transport.tls import TlsFiles, client_context, node_ids_of, server_context

NODES = ["node-1", "node-2", "node-3"]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    init_certs(out, NODES, ["localhost", "127.0.0.1"])
    return out


def test_init_writes_ca_nodes_and_client(certs_dir: Path) -> None:
    layout = CertLayout(certs_dir)
    ca = _cert(layout.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for node in NODES:
        peer = _cert(layout.peer_cert(node))
        assert node_ids_in_cert(peer) == [node]
        san = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["localhost"]
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        usages = peer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        peer.verify_directly_issued_by(ca)
        http = _cert(layout.http_cert(node))
        assert node_ids_in_cert(http) == []  # an HTTP certificate is not a peer identity
        http.verify_directly_issued_by(ca)
        for key in (layout.peer_key(node), layout.http_key(node)):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
    client = _cert(layout.client_cert("root"))
    assert client.subject.rfc4514_string() == "CN=root"
    assert node_ids_in_cert(client) == []
    assert stat.S_IMODE(layout.ca_key.stat().st_mode) == 0o600


def test_init_refuses_existing_files(certs_dir: Path) -> None:
    before = (certs_dir / "ca.crt").read_bytes()
    with pytest.raises(CertError, match=r"refusing to overwrite existing files: .*ca\.crt"):
        init_certs(certs_dir, NODES, ["localhost"])
    assert (certs_dir / "ca.crt").read_bytes() == before


def test_add_node_uses_the_same_ca(certs_dir: Path, tmp_path: Path) -> None:
    add_node(certs_dir, "node-4", ["node4.example", "10.0.0.4"])
    layout = CertLayout(certs_dir)
    peer = _cert(layout.peer_cert("node-4"))
    peer.verify_directly_issued_by(_cert(layout.ca_cert))
    assert node_ids_in_cert(peer) == ["node-4"]
    with pytest.raises(CertError, match="refusing to overwrite"):
        add_node(certs_dir, "node-4", ["localhost"])
    with pytest.raises(CertError, match=r"no CA in .*run `raftkv certs init` first"):
        add_node(tmp_path, "node-5", ["localhost"])


@pytest.mark.parametrize(
    ("nodes", "hosts", "message"),
    [
        ([], ["localhost"], "--nodes needs at least one"),
        (["node 1"], ["localhost"], "node id 'node 1' is not valid"),
        (["n1", "n1"], ["localhost"], "lists a node twice"),
        (["n1"], [], "--hosts needs at least one"),
        (["n1"], ["bad host!"], "neither an IP address nor a DNS name"),
    ],
)
def test_init_rejects_bad_input(
    tmp_path: Path, nodes: list[str], hosts: list[str], message: str
) -> None:
    with pytest.raises(CertError, match=message):
        init_certs(tmp_path / "out", nodes, hosts)
    assert not (tmp_path / "out").exists()


def test_add_node_refuses_a_ca_key_of_another_ca(tmp_path: Path) -> None:
    init_certs(tmp_path / "a", ["n1"], ["localhost"])
    init_certs(tmp_path / "b", ["n1"], ["localhost"])
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(CertError, match="does not belong to the CA certificate"):
        load_ca_files(CertLayout(tmp_path / "a"))


def test_cli_init_and_add_node(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "certs"
    result = runner.invoke(app, ["certs", "init", "--nodes", "node-1,node-2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "raftkv://node/<node id>" in result.output
    assert (out / "node-2" / "peer.key").is_file()
    again = runner.invoke(app, ["certs", "init", "--nodes", "node-1", "--out", str(out)])
    assert again.exit_code == 2
    assert "refusing to overwrite" in again.output
    add = runner.invoke(app, ["certs", "add-node", "node-3", "--hosts", "h3", "--out", str(out)])
    assert add.exit_code == 0, add.output
    missing = runner.invoke(app, ["certs", "add-node", "node-3", "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2
    assert "no CA in" in missing.output
    client = runner.invoke(app, ["certs", "add-client", "alice", "--out", str(out)])
    assert client.exit_code == 0, client.output
    assert (out / "client" / "alice.crt").is_file()


def test_generated_certs_complete_a_mutual_tls_handshake(certs_dir: Path) -> None:
    layout = CertLayout(certs_dir)

    def files(node: str) -> TlsFiles:
        return TlsFiles(layout.peer_cert(node), layout.peer_key(node), layout.ca_cert)

    async def main() -> tuple[list[str], list[str]]:
        seen: list[list[str]] = []

        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(node_ids_of(writer.get_extra_info("peercert")))
            writer.write(b"ok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(
            on_conn, "127.0.0.1", 0, ssl=server_context(files("node-1"))
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(files("node-2"))
        )
        server_ids = node_ids_of(writer.get_extra_info("peercert"))
        assert await reader.read() == b"ok"
        writer.close()
        server.close()
        await server.wait_closed()
        return seen[0], server_ids

    client_ids, server_ids = asyncio.run(main())
    assert client_ids == ["node-2"]
    assert server_ids == ["node-1"]


def test_leaf_validity_and_backdating(tmp_path: Path) -> None:
    init_certs(tmp_path, ["n1"], ["localhost"], days=10)
    cert = _cert(CertLayout(tmp_path).peer_cert("n1"))
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc < now
    assert dt.timedelta(days=9) < cert.not_valid_after_utc - now <= dt.timedelta(days=10)
