"""Writes forwarded over the peer link (`server.forward_over_peer`) on real processes: acked
writes readable everywhere, a leader killed under load (no acked write lost, none applied
twice), the client's credentials checked with TLS on the peer link, and a leader that does
not announce the frames (an older node) answered over HTTP."""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from raftkv.transport.certs import init_certs
from tests.integration.cluster import (
    NODE_IDS,
    Cluster,
    MakeCluster,
    Node,
    Reply,
    kv_path,
    wait_for,
)
from tests.integration.test_client_security import ROOT_PASSWORD, SecureCluster
from tests.integration.test_crash_recovery import Writer, run_writer

ON: Mapping[str, object] = {"forward_over_peer": True}
WRITERS = 4


def metric(c: Cluster, node_id: str, name: str, status: str = "200") -> float:
    text = c.req(node_id, "GET", "/metrics").body.decode()
    match = re.search(rf'^{name}{{status="{status}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def over_peer(c: Cluster, node_id: str) -> float:
    return metric(c, node_id, "raftkv_http_forwarded_over_peer_total")


def forwarded(c: Cluster, node_id: str) -> float:
    return metric(c, node_id, "raftkv_http_forwarded_total")


def test_forwarded_writes_are_acknowledged_and_readable_on_every_node(
    make_cluster: MakeCluster,
) -> None:
    c = make_cluster(server_extra=ON)
    c.start()
    leader = c.wait_ready()
    followers = [n for n in NODE_IDS if n != leader]
    for i, node_id in enumerate(followers):
        reply = c.put(node_id, f"via-{node_id}", f"value-{i}")
        assert reply.status == 200, reply
        assert reply.json["revision"] >= 1
        assert reply.headers["etag"] == f'"{reply.json["revision"]}"'
        reply = c.delete(node_id, f"absent-{i}")
        assert reply.status == 404 and reply.json["code"] == "key_not_found", reply
        assert over_peer(c, node_id) == 1  # the PUT (the 404 is counted under its status)
        assert metric(c, node_id, "raftkv_http_forwarded_over_peer_total", "404") == 1
    for node_id in NODE_IDS:
        for i, via in enumerate(followers):

            def seen(node_id: str = node_id, via: str = via, i: int = i) -> bool:
                reply = c.get(node_id, f"via-{via}", consistency="stale")
                return reply.status == 200 and reply.json["value"] == f"value-{i}"

            wait_for(f"{node_id} applied the write via {via}", seen, 30.0, c.dump_logs)
            reply = c.get(node_id, f"via-{via}")
            assert reply.json["version"] == 1


def test_leader_killed_under_forwarded_load_loses_no_acked_write_and_applies_none_twice(
    make_cluster: MakeCluster,
) -> None:
    """Unique keys, each sent once by its client, through the followers (over the peer link);
    the leader is killed -9 mid-load. Every acknowledged key holds its value at version 1 (a
    write applied twice would be version 2); an unknown one is absent or the same."""
    c = make_cluster(server_extra=ON)
    c.start()
    leader = c.wait_ready()
    followers = [n for n in NODE_IDS if n != leader]
    writers = [Writer(n) for n in range(WRITERS)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=run_writer, args=(c, w, stop, tuple(followers))) for w in writers
    ]
    for t in threads:
        t.start()
    try:
        wait_for("writes acked", lambda: all(len(w.acked) >= 20 for w in writers), 60.0)
        assert all(over_peer(c, f) > 0 for f in followers)
        c.kill(leader)
        before = [len(w.acked) for w in writers]
        new_leader = c.wait_leader(followers)
        wait_for(
            "writes acked after the kill",
            lambda: all(len(w.acked) >= b + 20 for w, b in zip(writers, before, strict=True)),
            60.0,
            c.dump_logs,
        )
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    for w in writers:
        for key, value in w.acked.items():
            reply = c.get(new_leader, key)
            assert reply.status == 200, (key, reply)
            assert reply.json["value"] == value and reply.json["version"] == 1, (key, reply)
        for key, value in w.unknown.items():
            reply = c.get(new_leader, key)
            assert reply.status in (200, 404), (key, reply)
            if reply.status == 200:
                assert reply.json["value"] == value and reply.json["version"] == 1, (key, reply)


def https(
    ctx: ssl.SSLContext,
    node: Node,
    method: str,
    path: str,
    body: Any = None,
    auth: str | None = None,
) -> Reply:
    conn = http.client.HTTPSConnection(node.host, node.http_port, context=ctx, timeout=15)
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def test_the_leader_checks_the_clients_credentials_with_tls_on_the_peer_link(
    tmp_path: Path,
) -> None:
    c = SecureCluster(tmp_path / "secure")  # forward_over_peer: on by default
    try:
        hosts = sorted({n.host for n in c.nodes.values()} | {"localhost"})
        init_certs(c.root / "certs", list(NODE_IDS), hosts)
        for node_id in NODE_IDS:
            c.start_node(node_id, env={"RAFTKV_ROOT_PASSWORD": ROOT_PASSWORD})
        ctx = ssl.create_default_context(cafile=str(c.root / "certs" / "ca.crt"))
        root = basic("root", ROOT_PASSWORD)

        def leader() -> str | None:
            for node in c.nodes.values():
                try:
                    reply = https(ctx, node, "GET", "/cluster/local")
                except OSError:
                    return None
                if reply.status == 200 and reply.json.get("role") == "Leader":
                    return node.id
            return None

        def root_writes(node_id: str) -> bool:
            try:
                reply = https(ctx, c.nodes[node_id], "PUT", kv_path("probe"), {"value": "x"}, root)
            except OSError:
                return False
            return reply.status == 200

        lead = wait_for("a leader over HTTPS", leader, 90.0, c.dump_logs)
        follower = c.nodes[next(n for n in NODE_IDS if n != lead)]
        wait_for("root writes via a follower", lambda: root_writes(follower.id), 90.0)
        for method, path, body in (
            ("POST", "/auth/roles", {"name": "app"}),
            ("PUT", "/auth/roles/app/permissions", {"prefix": "app/", "permission": "readwrite"}),
            ("POST", "/auth/users", {"name": "ann", "password": "ann-pw", "roles": ["app"]}),
        ):
            reply = https(ctx, c.nodes[lead], method, path, body, root)
            assert reply.status in (200, 201), reply

        ann = basic("ann", "ann-pw")

        def ann_writes() -> bool:
            reply = https(ctx, follower, "PUT", kv_path("app/1"), {"value": "a"}, ann)
            return reply.status == 200

        wait_for("ann's user reached the follower", ann_writes, 30.0)
        cases = (
            (None, "app/2", 401, "unauthenticated"),
            ("Bearer not.a-token", "app/2", 401, "invalid_token"),
            (basic("ann", "wrong"), "app/2", 401, "invalid_credentials"),
            (ann, "other/2", 403, "permission_denied"),
        )
        for auth, key, status, code in cases:
            reply = https(ctx, follower, "PUT", kv_path(key), {"value": "v"}, auth)
            assert (reply.status, reply.json["code"]) == (status, code), (auth, reply)
        for key in ("app/2", "other/2"):
            reply = https(ctx, c.nodes[lead], "GET", kv_path(key), None, root)
            assert reply.status == 404, reply  # nothing refused was written
        text = https(ctx, follower, "GET", "/metrics").body.decode()
        match = re.search(
            r'^raftkv_http_forwarded_over_peer_total{status="200"} (\S+)$', text, re.MULTILINE
        )
        assert match and float(match.group(1)) >= 2  # root's probe and ann's write: peer link
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()


class OldLeaderCluster(Cluster):
    """node-1 runs with `forward_over_peer: false` -- its Hello announces no forwarding frames,
    exactly as an older release's -- the others with it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        old = self.config()
        old["server"] = {"forward_over_peer": False}
        self.old_config = self.root / "old.yaml"
        self.old_config.write_text(yaml.safe_dump(old, sort_keys=False))

    def _command(self, node: Node) -> list[str]:
        command = super()._command(node)
        if node.id == "node-1":
            command[command.index("--config") + 1] = str(self.old_config)
        return command


def test_a_leader_that_does_not_announce_the_frames_gets_http_forwards(tmp_path: Path) -> None:
    with OldLeaderCluster(tmp_path / "mixed", server_extra=ON) as c:
        c.start()
        leader = c.wait_ready()
        if leader != "node-1":
            reply = c.req(leader, "POST", "/cluster/leader", body=b'{"to": "node-1"}')
            assert reply.status == 200, reply
            c.wait_leader()
        assert c.wait_leader() == "node-1"
        reply = c.put("node-2", "to-old", "v1")
        assert reply.status == 200, reply
        assert forwarded(c, "node-2") == 1 and over_peer(c, "node-2") == 0  # over HTTP
        c.kill("node-1")
        new_leader = c.wait_leader(["node-2", "node-3"])
        follower = "node-3" if new_leader == "node-2" else "node-2"
        reply = c.put(follower, "to-new", "v2")
        assert reply.status == 200, reply
        assert over_peer(c, follower) == 1  # both announce: the peer link
        c.start_node("node-1")  # the old node again, now a follower: it forwards over HTTP
        c.wait_ready()
        reply = c.put("node-1", "from-old", "v3")
        assert reply.status == 200, reply
        assert forwarded(c, "node-1") == 1 and over_peer(c, "node-1") == 0
        for key, value in (("to-old", "v1"), ("to-new", "v2"), ("from-old", "v3")):
            reply = c.get(new_leader, key)
            assert reply.status == 200 and reply.json["value"] == value, reply
