"""Mutual TLS between peers with certificates from `raftkv certs`: who is refused, with which
log line, and reload without restart."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from raftkv.codec.wire import PROTOCOL_VERSION, Hello, encode_frames
from raftkv.raft.types import NodeId
from raftkv.transport.certs import CertLayout, Issued, init_certs, issue_peer
from raftkv.transport.tls import PeerTls, TlsConfigError, TlsFiles
from tests.unit.transport.transport_helpers import FAST, Node, eventually, hb, wire

Run = Callable[..., Any]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    init_certs(root / "good", ["a", "b", "c"], ["localhost", "127.0.0.1"])
    init_certs(root / "other", ["b"], ["localhost", "127.0.0.1"])  # another cluster's CA
    good = CertLayout(root / "good")
    ca = Issued(good.ca_cert.read_bytes(), good.ca_key.read_bytes())
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    expired = issue_peer(ca, "b", ["127.0.0.1"], days=1, now=past)
    (root / "expired").mkdir()
    (root / "expired" / "peer.crt").write_bytes(expired.cert_pem)
    (root / "expired" / "peer.key").write_bytes(expired.key_pem)
    return root


def files(pki: Path, node: str, *, tree: str = "good", ca_tree: str = "good") -> TlsFiles:
    layout = CertLayout(pki / tree)
    return TlsFiles(
        layout.peer_cert(node), layout.peer_key(node), CertLayout(pki / ca_tree).ca_cert
    )


def tls_node(node: str, tls: TlsFiles) -> Node:
    return Node(node, tls=PeerTls(tls), tuning=FAST)


def test_members_with_cluster_certificates_talk(run: Run, pki: Path) -> None:
    async def scenario() -> None:
        a = await tls_node("a", files(pki, "a")).start()
        b = await tls_node("b", files(pki, "b")).start()
        try:
            await wire([a, b])
            a.transport.send([hb("a", "b", 1)])
            b.transport.send([hb("b", "a", 2)])
            assert await b.next() == hb("a", "b", 1)
            assert await a.next() == hb("b", "a", 2)
        finally:
            await a.stop()
            await b.stop()

    run(scenario())


def refused_reasons(logs: list[dict[str, Any]]) -> list[str]:
    return [str(e["reason"]) for e in logs if e["event"] in ("inbound_refused", "peer_tls_refused")]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong-ca", "not signed by the cluster CA"),
        ("expired", "expired"),
        ("wrong-node-id", "wrong node id in SAN"),
    ],
)
def test_bad_certificates_are_refused_with_the_reason(
    run: Run, pki: Path, case: str, reason: str
) -> None:
    """b connects to a with a bad certificate: a refuses it and says why; nothing arrives."""
    bad = {
        # a certificate of another CA (it trusts ours, so it is a that must refuse it)
        "wrong-ca": files(pki, "b", tree="other", ca_tree="good"),
        "expired": TlsFiles(
            pki / "expired" / "peer.crt", pki / "expired" / "peer.key", files(pki, "a").ca
        ),
        "wrong-node-id": files(pki, "c"),  # a valid cluster certificate, but for node c
    }[case]

    async def scenario() -> None:
        with structlog.testing.capture_logs() as logs:
            a = await tls_node("a", files(pki, "a")).start()
            b = await tls_node("b", bad).start()
            try:
                b.transport.update_peer(a.id, a.addr)
                await eventually(lambda: any(reason in r for r in refused_reasons(logs)))
                b.transport.send([hb("b", "a", 1)])
                assert "b" not in a.transport.inbound_peers()
                assert a.inbox.empty()
            finally:
                await a.stop()
                await b.stop()
        assert any(e["event"] == "inbound_refused" and reason in e["reason"] for e in logs), (
            refused_reasons(logs)
        )

    run(scenario())


def test_dialled_peer_must_present_its_own_node_id(run: Run, pki: Path) -> None:
    """a dials "b", but whoever listens there has c's certificate: a refuses to send to it."""

    async def scenario() -> None:
        with structlog.testing.capture_logs() as logs:
            a = await tls_node("a", files(pki, "a")).start()
            impostor = await tls_node("c", files(pki, "c")).start()
            try:
                a.transport.update_peer(NodeId("b"), impostor.addr)
                await eventually(
                    lambda: any("wrong node id in SAN" in r for r in refused_reasons(logs))
                )
                assert a.transport.connected_peers() == []
            finally:
                await a.stop()
                await impostor.stop()

    run(scenario())


def test_plain_tcp_to_a_tls_port_is_refused(run: Run, pki: Path) -> None:
    async def scenario() -> None:
        a = await tls_node("a", files(pki, "a")).start()
        try:
            with structlog.testing.capture_logs() as logs:
                reader, writer = await asyncio.open_connection(*a.addr)
                writer.write(encode_frames([Hello(PROTOCOL_VERSION, "test", NodeId("b"))]))
                async with asyncio.timeout(5):
                    try:
                        while await reader.read(4096):
                            pass
                    except ConnectionResetError:
                        pass
                writer.close()
                await writer.wait_closed()
            assert any("not TLS" in r for r in refused_reasons(logs)), refused_reasons(logs)
            assert a.inbox.empty()
        finally:
            await a.stop()

    run(scenario())


def test_reload_takes_new_certificates_without_restart(run: Run, pki: Path, tmp_path: Path) -> None:
    """b starts with another cluster's certificate (refused); its files are replaced and
    reloaded: the next connection is admitted, with no restart of either node."""
    live = tmp_path / "b"
    live.mkdir()
    other = files(pki, "b", tree="other", ca_tree="other")
    for src, name in ((other.cert, "peer.crt"), (other.key, "peer.key"), (other.ca, "ca.crt")):
        (live / name).write_bytes(src.read_bytes())
    b_files = TlsFiles(live / "peer.crt", live / "peer.key", live / "ca.crt")

    async def scenario() -> None:
        with structlog.testing.capture_logs() as logs:
            a = await tls_node("a", files(pki, "a")).start()
            b_tls = PeerTls(b_files)
            b = await Node("b", tls=b_tls, tuning=FAST).start()
            try:
                b.transport.update_peer(a.id, a.addr)
                await eventually(lambda: bool(refused_reasons(logs)))
                good = files(pki, "b")
                for src, name in (
                    (good.cert, "peer.crt"),
                    (good.key, "peer.key"),
                    (good.ca, "ca.crt"),
                ):
                    (live / name).write_bytes(src.read_bytes())
                b_tls.reload()
                await eventually(lambda: "b" in a.transport.inbound_peers())
                b.transport.send([hb("b", "a", 7)])
                assert await a.next() == hb("b", "a", 7)
            finally:
                await a.stop()
                await b.stop()

    run(scenario())


def test_a_failed_reload_keeps_the_old_contexts(pki: Path, tmp_path: Path) -> None:
    tls = PeerTls(files(pki, "a"))
    before = tls.server
    tls.files = TlsFiles(tmp_path / "missing.crt", tmp_path / "missing.key", files(pki, "a").ca)
    with pytest.raises(TlsConfigError, match=r"tls\.peer\.cert: .*missing\.crt does not exist"):
        tls.reload()
    assert tls.server is before
    mismatched = TlsFiles(files(pki, "a").cert, files(pki, "b").key, files(pki, "a").ca)
    with pytest.raises(TlsConfigError, match="cannot be loaded as a pair"):
        PeerTls(mismatched)
