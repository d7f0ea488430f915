"""The seed walkthrough over HTTPS with authentication, on real processes (free ports).

The cluster runs with `tls.http`, `tls.peer` and `auth.enabled` (what `start-cluster.sh --tls`
runs), certificates from `raftkv certs init`, user root from RAFTKV_ROOT_PASSWORD. Writes go to
followers too, so forwarding over HTTPS with the client's credentials is exercised; user and
role changes made on one node must reach every node.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from raftkv.transport.certs import init_certs
from tests.integration.cluster import NODE_IDS, Cluster, wait_for

ROOT_PASSWORD = "walkthrough-root-pw"
STORED = "Key-value pair stored successfully"


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


ROOT = basic("root", ROOT_PASSWORD)


class TlsCluster(Cluster):
    """The integration cluster with HTTPS, peer TLS and auth in its config."""

    def config(self) -> dict[str, object]:
        conf = super().config()
        root = self.root / "certs"
        conf["tls"] = {
            "http": {"cert": f"{root}/{{node_id}}/http.crt", "key": f"{root}/{{node_id}}/http.key"},
            "peer": {
                "cert": f"{root}/{{node_id}}/peer.crt",
                "key": f"{root}/{{node_id}}/peer.key",
                "ca": f"{root}/ca.crt",
            },
        }
        conf["auth"] = {"enabled": True}
        return conf


def https(
    ctx: ssl.SSLContext,
    address: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPSConnection(host, int(port), timeout=15, context=ctx)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else None
    finally:
        conn.close()


def test_seed_walkthrough_over_https_with_auth(tmp_path: Path) -> None:
    with TlsCluster(tmp_path / "cluster") as c:
        try:
            walkthrough(c)
        except BaseException:
            print(c.dump_logs())
            raise


def walkthrough(c: TlsCluster) -> None:
    hosts = sorted({n.host for n in c.nodes.values()} | {"localhost"})
    init_certs(c.root / "certs", list(NODE_IDS), hosts)
    ctx = ssl.create_default_context(cafile=str(c.root / "certs" / "ca.crt"))
    for node_id in NODE_IDS:
        c.start_node(node_id, env={"RAFTKV_ROOT_PASSWORD": ROOT_PASSWORD})
    addr = {n: c.nodes[n].http for n in NODE_IDS}

    def call(node: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        return https(ctx, addr[node], method, path, **kw)

    def leader() -> str | None:
        status, body = call("node-1", "GET", "/cluster/status")
        return body.get("leader") if status == 200 else None

    lead = wait_for("a leader over HTTPS", leader, deadline_s=90)
    followers = [n for n in NODE_IDS if n != lead]
    # The leader creates user root from RAFTKV_ROOT_PASSWORD; every node learns it.
    for node in NODE_IDS:
        wait_for(
            f"root known on {node}",
            lambda node=node: call(node, "GET", "/auth/whoami", headers=ROOT)[0] == 200,
            deadline_s=60,
        )

    # Test 1 of the seed: write, read from every node; replies byte for byte the seed's.
    body = json.dumps({"value": "John Doe, Software Engineer"}).encode()
    headers = {**ROOT, "Content-Type": "application/json"}
    status, reply = call(lead, "PUT", "/kv/user:john", body=body, headers=headers)
    assert status == 200
    assert {k: reply[k] for k in ("key", "value", "message")} == {
        "key": "user:john",
        "value": "John Doe, Software Engineer",
        "message": STORED,
    }
    for node in NODE_IDS:
        status, reply = call(node, "GET", "/kv/user:john", headers=ROOT)
        assert (status, reply["key"], reply["value"]) == (
            200,
            "user:john",
            "John Doe, Software Engineer",
        )
    # Test 2: a write on a follower is forwarded (over HTTPS, with the client's credentials).
    raw = {**ROOT, "Content-Type": "application/x-www-form-urlencoded"}
    status, reply = call(followers[0], "PUT", "/kv/test", body=b"hello world", headers=raw)
    assert (status, reply["value"]) == (200, "hello world")
    assert call(followers[1], "GET", "/kv/test", headers=ROOT)[1]["value"] == "hello world"

    # No credentials, wrong password: refused on every node; plain HTTP is not spoken.
    for node in NODE_IDS:
        status, reply = call(node, "GET", "/kv/test")
        assert (status, reply["code"]) == (401, "unauthenticated")
    assert call(lead, "GET", "/kv/test", headers=basic("root", "nope"))[0] == 401
    plain = http.client.HTTPConnection(*addr[lead].rsplit(":", 1), timeout=15)
    with pytest.raises((OSError, http.client.HTTPException)):
        plain.request("GET", "/health")
        plain.getresponse().read()
    plain.close()

    # Users and roles made through a follower reach every node.
    admin = followers[1]
    assert call(admin, "POST", "/auth/roles", body=b'{"name":"app"}', headers=ROOT)[0] == 201
    grant = json.dumps({"prefix": "app/", "permission": "readwrite"}).encode()
    assert call(admin, "PUT", "/auth/roles/app/permissions", body=grant, headers=ROOT)[0] == 200
    user = json.dumps({"name": "alice", "password": "alice-pw", "roles": ["app"]}).encode()
    assert call(admin, "POST", "/auth/users", body=user, headers=ROOT)[0] == 201
    for node in NODE_IDS:
        wait_for(
            f"alice known on {node}",
            lambda node=node: (
                call(node, "GET", "/auth/users/alice", headers=ROOT)
                == (200, {"name": "alice", "roles": ["app"]})
            ),
        )
    # A token issued by one node is good on every other (the signing key is replicated).
    login = json.dumps({"name": "alice", "password": "alice-pw"}).encode()
    status, token = call(followers[0], "POST", "/auth/token", body=login)
    assert status == 200
    bearer = {"Authorization": f"Bearer {token['token']}", "Content-Type": "text/plain"}
    assert call(followers[1], "PUT", "/kv/app/1", body=b"mine", headers=bearer)[0] == 200
    assert call(lead, "GET", "/kv/app/1", headers=bearer)[1]["value"] == "mine"
    status, reply = call(followers[1], "PUT", "/kv/user:john", body=b"x", headers=bearer)
    assert (status, reply["code"], reply["permission"]) == (403, "permission_denied", "write")
    status, reply = call(lead, "GET", "/debug/keys", headers=bearer)
    assert (status, reply["permission"]) == (403, "root")
    # Auth state is not in the key space: a root listing of every key shows none of it.
    status, reply = call(lead, "GET", "/kv?prefix=", headers=ROOT)
    assert status == 200 and "alice-pw" not in json.dumps(reply) and "user/" not in str(reply)

    # Revocation is replicated: setting a password (even the same one: a new salt, a new hash)
    # through one node voids the user's tokens on every node once applied there; a new login
    # works. Deleting the user voids them too.
    same = json.dumps({"password": "alice-pw"}).encode()
    mgmt = {**ROOT, "Content-Type": "application/json"}
    reset = call(followers[1], "PUT", "/auth/users/alice/password", body=same, headers=mgmt)
    assert reset[0] == 200, reset
    for node in NODE_IDS:
        wait_for(
            f"alice's old token refused on {node}",
            lambda node=node: (
                call(node, "GET", "/auth/whoami", headers=bearer)
                == (401, {"error": "the token is not valid", "code": "invalid_token"})
            ),
        )
    status, fresh = call(lead, "POST", "/auth/token", body=login)
    assert status == 200
    again = {"Authorization": f"Bearer {fresh['token']}"}
    assert call(followers[0], "GET", "/auth/whoami", headers=again)[0] == 200
    assert call(lead, "DELETE", "/auth/users/alice", headers=ROOT)[0] == 200
    for node in NODE_IDS:
        wait_for(
            f"alice's token refused on {node} once she is deleted",
            lambda node=node: call(node, "GET", "/auth/whoami", headers=again)[0] == 401,
        )

    # A forged forwarded-by claim (no peer certificate) is ignored: the follower forwards.
    spoof = {**raw, "X-Raftkv-Forwarded-By": lead}
    status, reply = call(followers[0], "PUT", "/kv/spoofed", body=b"v", headers=spoof)
    assert (status, reply["value"]) == (200, "v")

    # Test 4 of the seed: a follower stops; the cluster keeps serving over HTTPS.
    c.kill(followers[0], sig=15)
    assert call(lead, "PUT", "/kv/after", body=b"still", headers=raw)[0] == 200
    assert call(followers[1], "GET", "/kv/after", headers=ROOT)[1]["value"] == "still"
