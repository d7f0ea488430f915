"""`raftkv.client` and the CLI against a cluster with HTTPS and authentication (issue 10):
certificates from `raftkv certs init`, user root from RAFTKV_ROOT_PASSWORD, a limited user
with a role on one prefix."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raftkv.cli.main import app
from raftkv.client import Client, Forbidden, TLSError, Unauthorized
from raftkv.transport.certs import init_certs
from tests.integration.cluster import NODE_IDS, Cluster, wait_for

ROOT_PASSWORD = "client-root-pw"


class SecureCluster(Cluster):
    """HTTPS for the API, mutual TLS between peers, auth on."""

    def config(self) -> dict[str, object]:
        conf = super().config()
        certs = self.root / "certs"
        conf["tls"] = {
            "http": {
                "cert": f"{certs}/{{node_id}}/http.crt",
                "key": f"{certs}/{{node_id}}/http.key",
            },
            "peer": {
                "cert": f"{certs}/{{node_id}}/peer.crt",
                "key": f"{certs}/{{node_id}}/peer.key",
                "ca": f"{certs}/ca.crt",
            },
        }
        conf["auth"] = {"enabled": True}
        return conf


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecureCluster, Path]]:
    c = SecureCluster(tmp_path_factory.mktemp("secure"))
    try:
        hosts = sorted({n.host for n in c.nodes.values()} | {"localhost"})
        init_certs(c.root / "certs", list(NODE_IDS), hosts)
        for node_id in NODE_IDS:
            c.start_node(node_id, env={"RAFTKV_ROOT_PASSWORD": ROOT_PASSWORD})
        ca = c.root / "certs" / "ca.crt"
        eps = [n.http for n in c.nodes.values()]

        def root_works() -> bool:
            with Client(eps, ca=ca, username="root", password=ROOT_PASSWORD, timeout=5) as kv:
                kv.put("probe", "x")
                return True

        wait_for("root can write over HTTPS", root_works, deadline_s=90)
        yield c, ca
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()


def endpoints(c: Cluster) -> list[str]:
    return [n.http for n in c.nodes.values()]


def test_root_uses_the_whole_api_over_https(secure: tuple[SecureCluster, Path]) -> None:
    c, ca = secure
    with Client(endpoints(c), ca=ca, username="root", password=ROOT_PASSWORD) as kv:
        kv.put("sec:a", "1")
        assert kv.update("sec:a", lambda old: str(int(old or 0) + 1)).revision > 0
        assert kv.get("sec:a").value == "2"
        assert kv._engine._session is not None  # sessions work for an authenticated user
        assert kv.range("sec:").count == 1
        assert kv.status().leader is not None
    with Client(
        endpoints(c), ca=ca, username="root", password=ROOT_PASSWORD, token_auth=True
    ) as kv:
        assert kv.get("sec:a").value == "2"
        assert kv._engine._token_header is not None


def test_wrong_or_missing_credentials_and_ca(secure: tuple[SecureCluster, Path]) -> None:
    c, ca = secure
    with Client(endpoints(c), ca=ca) as kv, pytest.raises(Unauthorized):
        kv.get("sec:a")
    with (
        Client(endpoints(c), ca=ca, username="root", password="wrong") as kv,
        pytest.raises(Unauthorized),
    ):
        kv.put("sec:a", "x")
    https = [f"https://{e}" for e in endpoints(c)]
    with Client(https, timeout=5) as kv, pytest.raises(TLSError):
        kv.get("sec:a")  # the system's CAs do not know the cluster's


def test_a_user_limited_to_a_prefix(secure: tuple[SecureCluster, Path]) -> None:
    c, ca = secure
    with Client(endpoints(c), ca=ca, username="root", password=ROOT_PASSWORD) as root:
        root.put("app/config", "v1")
        root.put("other/secret", "s")
    admin = CliRunner()
    node = c.nodes["node-1"].http

    def root_call(method: str, path: str, body: object) -> None:
        host, _, port = node.rpartition(":")
        conn = http.client.HTTPSConnection(
            host, int(port), context=ssl.create_default_context(cafile=str(ca)), timeout=15
        )
        auth = base64.b64encode(f"root:{ROOT_PASSWORD}".encode()).decode()
        conn.request(
            method,
            path,
            body=json.dumps(body).encode(),
            headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status in (200, 201), (method, path, resp.status)

    root_call("POST", "/auth/roles", {"name": "app"})
    root_call("PUT", "/auth/roles/app/permissions", {"prefix": "app/", "permission": "readwrite"})
    root_call("POST", "/auth/users", {"name": "ann", "password": "ann-pw", "roles": ["app"]})

    def ann_can_write() -> bool:
        with Client(endpoints(c), ca=ca, username="ann", password="ann-pw", timeout=5) as kv:
            kv.put("app/config", "v2")
            return True

    wait_for("ann's role on every node", ann_can_write, deadline_s=30)
    with Client(endpoints(c), ca=ca, username="ann", password="ann-pw") as kv:
        assert kv.get("app/config").value == "v2"
        with pytest.raises(Forbidden) as info:
            kv.get("other/secret")
        assert info.value.status == 403
        with pytest.raises(Forbidden):
            kv.put("other/secret", "mine")

    done = admin.invoke(
        app,
        [
            "get",
            "app/config",
            "--json",
            "-e",
            ",".join(endpoints(c)),
            "--cacert",
            str(ca),
            "--user",
            "ann:ann-pw",
        ],
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["value"] == "v2"
    done = admin.invoke(
        app,
        ["get", "other/secret", "-e", ",".join(endpoints(c)), "--cacert", str(ca)],
        env={"RAFTKV_USER": "ann", "RAFTKV_PASSWORD": "ann-pw"},
    )
    assert done.exit_code == 3 and "permission" in done.stderr
