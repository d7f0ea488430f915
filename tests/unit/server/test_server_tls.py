"""HTTPS for the API and node-to-node HTTP with peer certificates (server/tls.py).

Certificates come from `raftkv certs init` (transport/certs.py), made once per module.
"""

from __future__ import annotations

import dataclasses
import shutil
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509

from raftkv.server.config import Address, ConfigError, Settings, load_settings
from raftkv.server.forward import FORWARDED_HEADER
from raftkv.server.http import create_app
from raftkv.server.runner import http_ssl_context, run_http
from raftkv.server.tls import (
    HttpTlsFiles,
    reload_client_contexts,
    reload_server_context,
    server_context,
    verified_node_ids,
)
from raftkv.transport.certs import CertLayout, add_node, init_certs
from raftkv.transport.tls import TlsConfigError, TlsFiles
from tests.unit.server.fakes import FakeNode, aio, closed_port, make_settings

NODES = ("node-1", "node-2", "node-3")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertLayout:
    root = tmp_path_factory.mktemp("certs")
    init_certs(root, list(NODES), ["localhost", "127.0.0.1"])
    return CertLayout(root)


def tls_settings(
    tmp_path: Path, certs: CertLayout, node_id: str, *, client_ca: bool = False, **kw: Any
) -> Settings:
    return make_settings(
        tmp_path,
        node_id,
        tls_http=HttpTlsFiles(
            certs.http_cert(node_id),
            certs.http_key(node_id),
            certs.ca_cert if client_ca else None,
        ),
        tls_peer=TlsFiles(certs.peer_cert(node_id), certs.peer_key(node_id), certs.ca_cert),
        **kw,
    )


def client_ctx(certs: CertLayout, *, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


@asynccontextmanager
async def serving(node: FakeNode, settings: Settings) -> AsyncIterator[int]:
    settings = dataclasses.replace(settings, http_listen=Address("127.0.0.1", 0))
    runner = await run_http(create_app(node, settings), settings)
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def fetch(
    method: str, url: str, ctx: ssl.SSLContext | bool, **kw: Any
) -> tuple[int, dict[str, Any]]:
    connector = aiohttp.TCPConnector(ssl=ctx)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, url, **kw) as resp,
    ):
        return resp.status, await resp.json()


@aio
async def test_https_api_and_plain_http_refused(tmp_path: Path, certs: CertLayout) -> None:
    node = FakeNode()
    async with serving(node, tls_settings(tmp_path, certs, "node-1")) as port:
        ctx = client_ctx(certs)
        status, body = await fetch(
            "PUT",
            f"https://localhost:{port}/kv/a",
            ctx,
            data=b"v",
            headers={"Content-Type": "text/plain"},
        )
        assert (status, body["value"]) == (200, "v")
        status, body = await fetch("GET", f"https://127.0.0.1:{port}/kv/a", ctx)
        assert (status, body["key"], body["value"]) == (200, "a", "v")
        with pytest.raises(aiohttp.ClientError):  # plain HTTP to the HTTPS port
            await fetch("GET", f"http://127.0.0.1:{port}/kv/a", False)
        with pytest.raises(aiohttp.ClientConnectorCertificateError):  # not our CA: refused
            await fetch("GET", f"https://127.0.0.1:{port}/kv/a", ssl.create_default_context())


@aio
async def test_client_ca_requires_a_client_certificate(tmp_path: Path, certs: CertLayout) -> None:
    settings = tls_settings(tmp_path, certs, "node-1", client_ca=True)
    async with serving(FakeNode(), settings) as port:
        url = f"https://localhost:{port}/health"
        with pytest.raises(aiohttp.ClientError):
            await fetch("GET", url, client_ctx(certs))
        client = (certs.client_cert("root"), certs.client_key("root"))
        assert (await fetch("GET", url, client_ctx(certs, cert=client)))[0] == 200


class Recorder:
    """An HTTPS 'leader' that records what reached it: headers and the caller's node ids."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, str], list[str]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((dict(request.headers), verified_node_ids(request)))
        return web.json_response(
            {"ok": True}, headers={"ETag": '"7"', "Raftkv-Revision": "7", "X-Other": "no"}
        )


@asynccontextmanager
async def recorder_leader(settings: Settings, recorder: Recorder) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(settings))
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@aio
async def test_forward_over_https_presents_peer_cert_and_passes_headers(
    tmp_path: Path, certs: CertLayout
) -> None:
    recorder = Recorder()
    async with recorder_leader(tls_settings(tmp_path, certs, "node-1"), recorder) as port:
        peers = {"node-1": f"127.0.0.1:{port}", "node-2": "127.0.0.1:2", "node-3": "127.0.0.1:3"}
        follower = FakeNode("node-2", leader_id="node-1", http_peers=peers)
        async with serving(follower, tls_settings(tmp_path, certs, "node-2")) as fport:
            headers = {
                "Authorization": "Bearer abc",
                "If-Match": '"3"',
                "Raftkv-Session": "5",
                "Raftkv-Seq": "4",
                "Raftkv-Ack": "3",
                "Content-Type": "text/plain",
            }
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=client_ctx(certs))
                ) as session,
                session.put(f"https://localhost:{fport}/kv/k", data=b"v", headers=headers) as resp,
            ):
                assert resp.status == 200
                assert resp.headers["ETag"] == '"7"'
                assert resp.headers["Raftkv-Revision"] == "7"
                assert "X-Other" not in resp.headers
    [(got, callers)] = recorder.seen
    assert callers == ["node-2"]  # the follower proved who it is with its peer certificate
    assert got[FORWARDED_HEADER] == "node-2"
    for name, value in headers.items():
        assert got[name] == value


@aio
async def test_forwarded_by_claim_without_peer_cert_is_ignored(
    tmp_path: Path, certs: CertLayout
) -> None:
    # node-1 believes node-3 (unreachable) leads. A forwarded request that node-1 believes is
    # answered 503 not_leader (never forwarded again); an unproven claim is handled as a
    # client's request: node-1 tries to forward it.
    peers = {
        "node-1": "127.0.0.1:1",
        "node-2": "127.0.0.1:2",
        "node-3": f"127.0.0.1:{closed_port()}",
    }
    node = FakeNode("node-1", leader_id="node-3", http_peers=peers)
    async with serving(node, tls_settings(tmp_path, certs, "node-1")) as port:
        url = f"https://localhost:{port}/kv/k"
        claim = {FORWARDED_HEADER: "node-2"}
        status, body = await fetch("PUT", url, client_ctx(certs), data=b"v", headers=claim)
        assert (status, body["code"]) == (503, "leader_unreachable")
        # The same claim made with node-2's peer certificate is believed.
        ctx = client_ctx(certs, cert=(certs.peer_cert("node-2"), certs.peer_key("node-2")))
        status, body = await fetch("PUT", url, ctx, data=b"v", headers=claim)
        assert (status, body["code"]) == (503, "not_leader")
        # A peer certificate naming another node does not prove the claim either.
        ctx = client_ctx(certs, cert=(certs.peer_cert("node-3"), certs.peer_key("node-3")))
        status, body = await fetch("PUT", url, ctx, data=b"v", headers=claim)
        assert (status, body["code"]) == (503, "leader_unreachable")
    assert node.data == {}


@aio
async def test_forward_to_a_leader_with_an_untrusted_cert_is_not_sent(
    tmp_path: Path, certs: CertLayout, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = tmp_path_factory.mktemp("other-ca")
    init_certs(other, ["node-1"], ["localhost", "127.0.0.1"])
    recorder = Recorder()
    rogue = tls_settings(tmp_path, CertLayout(other), "node-1")
    async with recorder_leader(rogue, recorder) as port:
        settings = tls_settings(tmp_path, certs, "node-2")
        peers = {"node-1": f"127.0.0.1:{port}", "node-2": "127.0.0.1:2", "node-3": "127.0.0.1:3"}
        follower = FakeNode("node-2", leader_id="node-1", http_peers=peers)
        async with serving(follower, settings) as fport:
            status, body = await fetch(
                "PUT", f"https://localhost:{fport}/kv/k", client_ctx(certs), data=b"v"
            )
    assert (status, body["code"]) == (503, "leader_unreachable")  # refused at the handshake
    assert recorder.seen == []


def test_tls_config_paths_and_errors(tmp_path: Path, certs: CertLayout) -> None:
    base = tmp_path / "cluster.yaml"
    seed = (
        "cluster:\n  nodes:\n    node-1: '127.0.0.1:9001'\n    node-2: '127.0.0.1:9002'\n"
        f"  data_dir: '{tmp_path}/data'\n"
    )
    base.write_text(
        seed
        + "tls:\n  http:\n"
        + f"    cert: '{certs.root}/{{node_id}}/http.crt'\n"
        + f"    key: '{certs.root}/{{node_id}}/http.key'\n"
        + "  peer:\n"
        + f"    cert: '{certs.root}/{{node_id}}/peer.crt'\n"
        + f"    key: '{certs.root}/{{node_id}}/peer.key'\n"
        + f"    ca: '{certs.ca_cert}'\n"
    )
    s = load_settings({"config": base, "node_id": "node-2"}, env={})
    assert s.tls_http == HttpTlsFiles(certs.http_cert("node-2"), certs.http_key("node-2"), None)
    assert s.tls_peer == TlsFiles(
        certs.peer_cert("node-2"), certs.peer_key("node-2"), certs.ca_cert
    )
    base.write_text(seed + f"tls:\n  http:\n    cert: '{certs.root}/nope.crt'\n    key: x\n")
    with pytest.raises(ConfigError, match=r"^tls\.http\.cert: .*nope\.crt does not exist"):
        load_settings({"config": base, "node_id": "node-2"}, env={})
    base.write_text(seed + f"tls:\n  peer:\n    cert: '{certs.peer_cert('node-1')}'\n")
    with pytest.raises(ConfigError, match=r"^tls\.peer\.key: required"):
        load_settings({"config": base, "node_id": "node-2"}, env={})


@aio
async def test_https_without_peer_tls_forwards_with_tls_http_ca(
    tmp_path: Path, certs: CertLayout
) -> None:
    recorder = Recorder()
    leader_settings = dataclasses.replace(tls_settings(tmp_path, certs, "node-1"), tls_peer=None)
    async with recorder_leader(leader_settings, recorder) as port:
        peers = {"node-1": f"127.0.0.1:{port}", "node-2": "127.0.0.1:2", "node-3": "127.0.0.1:3"}
        base = dataclasses.replace(tls_settings(tmp_path, certs, "node-2"), tls_peer=None)
        text = {"Content-Type": "text/plain"}
        outcomes = []
        for http_ca in (None, certs.ca_cert):  # the system CAs do not know the cluster CA
            assert base.tls_http is not None
            files = dataclasses.replace(base.tls_http, ca=http_ca)
            follower = FakeNode("node-2", leader_id="node-1", http_peers=peers)
            async with serving(follower, dataclasses.replace(base, tls_http=files)) as fport:
                url = f"https://localhost:{fport}/kv/k"
                status, body = await fetch("PUT", url, client_ctx(certs), data=b"v", headers=text)
                outcomes.append((status, body.get("code")))
    assert outcomes == [(503, "leader_unreachable"), (200, None)]
    [(_, callers)] = recorder.seen
    assert callers == []  # no peer certificate to present


@aio
async def test_https_certificate_reload_without_restart(
    tmp_path: Path, certs: CertLayout, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = CertLayout(tmp_path_factory.mktemp("rotated"))
    init_certs(other.root, ["node-1"], ["localhost", "127.0.0.1"])
    live = tmp_path / "live"
    live.mkdir()
    for name in ("http.crt", "http.key"):
        shutil.copy(certs.root / "node-1" / name, live / name)
    settings = dataclasses.replace(
        make_settings(tmp_path),
        tls_http=HttpTlsFiles(live / "http.crt", live / "http.key"),
        http_listen=Address("127.0.0.1", 0),
    )
    runner = await run_http(create_app(FakeNode(), settings), settings)
    try:
        url = f"https://localhost:{runner.addresses[0][1]}/health"
        assert (await fetch("GET", url, client_ctx(certs)))[0] == 200
        ctx = http_ssl_context(runner)
        assert ctx is not None
        # A bad pair is refused and the old one keeps serving.
        (live / "http.key").write_text("not a key")
        with pytest.raises(TlsConfigError):
            reload_server_context(ctx, settings)
        assert (await fetch("GET", url, client_ctx(certs)))[0] == 200
        for name in ("http.crt", "http.key"):
            shutil.copy(other.root / "node-1" / name, live / name)
        reload_server_context(ctx, settings)
        assert (await fetch("GET", url, client_ctx(other)))[0] == 200  # the new certificate
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await fetch("GET", url, client_ctx(certs))
    finally:
        await runner.cleanup()


@aio
async def test_cluster_operations_open_to_members_with_auth_on(
    tmp_path: Path, certs: CertLayout
) -> None:
    from tests.unit.server.test_server_auth import AuthFakeNode

    settings = tls_settings(tmp_path, certs, "node-1", auth_enabled=True)
    async with serving(AuthFakeNode(), settings) as port:
        base = f"https://localhost:{port}"
        anonymous = client_ctx(certs)
        member = client_ctx(certs, cert=(certs.peer_cert("node-2"), certs.peer_key("node-2")))
        operator = client_ctx(certs, cert=(certs.client_cert("root"), certs.client_key("root")))
        # Not a route on this fake: past the auth check, the router answers 404.
        status, body = await fetch("POST", f"{base}/cluster/leader", anonymous, json={})
        assert (status, body["code"]) == (401, "unauthenticated")
        status, body = await fetch("POST", f"{base}/cluster/leader", operator, json={})
        assert (status, body["code"]) == (401, "unauthenticated")  # not a member's certificate
        assert (await fetch("POST", f"{base}/cluster/leader", member, json={}))[0] == 404
        assert (await fetch("GET", f"{base}/cluster/config", anonymous))[0] == 404  # open
        # A member certificate is no key permission.
        status, body = await fetch("GET", f"{base}/kv/x", member)
        assert (status, body["code"]) == (401, "unauthenticated")


class SerialRecorder(Recorder):
    """Records the serial number of the caller's certificate; one request per connection."""

    def __init__(self) -> None:
        super().__init__()
        self.serials: list[int] = []

    async def handle(self, request: web.Request) -> web.Response:
        transport = request.transport
        assert transport is not None
        der = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        self.serials.append(x509.load_der_x509_certificate(der).serial_number)
        resp = await super().handle(request)
        resp.force_close()  # the next forward opens a new connection (a new handshake)
        return resp


@aio
async def test_forwarding_presents_the_rotated_peer_certificate_after_reload(
    tmp_path: Path, certs: CertLayout, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """SIGHUP reloads the node-to-node client context too (not only the peer transport's and
    the HTTPS listener's): a forward after the reload presents the new peer certificate."""
    rotated = CertLayout(tmp_path_factory.mktemp("rotated-peer"))
    for name in ("ca.crt", "ca.key"):
        shutil.copy(certs.root / name, rotated.root / name)
    add_node(rotated.root, "node-2", ["localhost", "127.0.0.1"])  # same CA, a new certificate
    live = tmp_path / "live"
    live.mkdir()
    for name in ("peer.crt", "peer.key"):
        shutil.copy(certs.root / "node-2" / name, live / name)
    settings = dataclasses.replace(
        tls_settings(tmp_path, certs, "node-2"),
        tls_peer=TlsFiles(live / "peer.crt", live / "peer.key", certs.ca_cert),
    )
    serial = {
        p: x509.load_pem_x509_certificate((d / "node-2" / "peer.crt").read_bytes()).serial_number
        for p, d in (("old", certs.root), ("new", rotated.root))
    }
    recorder = SerialRecorder()
    async with recorder_leader(tls_settings(tmp_path, certs, "node-1"), recorder) as port:
        peers = {"node-1": f"127.0.0.1:{port}", "node-2": "127.0.0.1:2", "node-3": "127.0.0.1:3"}
        follower = FakeNode("node-2", leader_id="node-1", http_peers=peers)
        async with serving(follower, settings) as fport:
            url = f"https://localhost:{fport}/kv/k"
            put = {"data": b"v", "headers": {"Content-Type": "text/plain"}}
            assert (await fetch("PUT", url, client_ctx(certs), **put))[0] == 200
            for name in ("peer.crt", "peer.key"):
                shutil.copy(rotated.root / "node-2" / name, live / name)
            assert reload_client_contexts(settings) >= 1
            assert (await fetch("PUT", url, client_ctx(certs), **put))[0] == 200
            # A bad file is refused and changes nothing.
            (live / "peer.key").write_text("not a key")
            with pytest.raises(TlsConfigError):
                reload_client_contexts(settings)
            assert (await fetch("PUT", url, client_ctx(certs), **put))[0] == 200
    assert recorder.serials == [serial["old"], serial["new"], serial["new"]]
    assert all(callers == ["node-2"] for _, callers in recorder.seen)
