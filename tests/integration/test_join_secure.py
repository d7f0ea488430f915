"""`raftkv serve --join` into a cluster with HTTPS, mutual peer TLS and auth (issue 13 item 2),
and the operator tools (`member`, `inspect`) with the shared connection flags.

- node-4 has certificates from `certs add-node` and joins with `--cacert` only: its join
  request presents its own peer certificate (a member's certificate may add members); the
  others accept its Raft connections once the learner entry is live; it is promoted.
- node-5 joins with an operator's credentials instead (`--cert` a client certificate, which
  proves nothing by itself, plus `--user root --password ...`); a wrong password and a node
  with neither certificate nor credentials are refused with words that say what to do.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

from raftkv.client import Client
from raftkv.transport.certs import add_node, init_certs
from tests.integration.cluster import NODE_IDS, raftkv_executable, wait_for
from tests.integration.test_client_security import SecureCluster

ROOT_PASSWORD = "join-root-pw"
HOSTS = ["localhost", *(f"127.0.0.{i}" for i in range(1, 7))]


def raftkv(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTKV_")}
    return subprocess.run(
        [str(raftkv_executable()), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_join_with_tls_and_auth(tmp_path: Path) -> None:
    c = SecureCluster(tmp_path / "c")
    try:
        run(c)
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()


def run(c: SecureCluster) -> None:
    certs = c.root / "certs"
    init_certs(certs, list(NODE_IDS), HOSTS)
    ca = str(certs / "ca.crt")
    for node_id in NODE_IDS:
        c.start_node(node_id, env={"RAFTKV_ROOT_PASSWORD": ROOT_PASSWORD})
    eps = [f"https://{n.http}" for n in c.nodes.values()]
    root = {"ca": ca, "username": "root", "password": ROOT_PASSWORD, "timeout": 5}

    def root_writes() -> bool:
        with Client(eps, **root) as kv:
            kv.put("before", "1")
        return True

    wait_for("root can write over HTTPS", root_writes, deadline_s=90)
    creds = ["--cacert", ca, "--user", "root", "--password", ROOT_PASSWORD]
    via = f"https://{c.nodes['node-1'].http}"

    def roles() -> dict[str, str]:
        done = raftkv("member", "list", "-e", via, "--json", *creds)
        assert done.returncode == 0, done.stderr
        return {m["id"]: m["role"] for m in json.loads(done.stdout)["members"]}

    # node-4: a certificate from `certs add-node`, no password.
    add_node(certs, "node-4", HOSTS)
    node4 = c.new_node("node-4", join_via="node-1")
    node4.join_url = via
    c.start_node("node-4", args=["--cacert", ca])
    wait_for("node-4 promoted", lambda: roles().get("node-4") == "voter", 90, c.dump_logs)

    # A node with neither certificate nor credentials is refused, with what to do.
    taken = {p for n in c.nodes.values() for p in (n.http_port, n.raft_port)}
    bad = raftkv(
        "serve", "--node-id", "node-9", "--data-dir", str(c.root / "data"), "--join", via,
        "--raft-address", f"127.0.0.6:{max(taken) + 1}", "--http-address",
        f"127.0.0.6:{max(taken) + 2}", "--cacert", ca,
    )  # fmt: skip
    assert bad.returncode == 2, bad
    assert "401" in bad.stderr and "raftkv certs add-node" in bad.stderr, bad.stderr
    assert "node-9" not in roles()

    # node-5: an operator's credentials (a client certificate proves no membership).
    add_node(certs, "node-5", HOSTS)
    node5 = c.new_node("node-5", join_via="node-1")
    node5.join_url = via
    client_cert = [
        "--cert",
        str(certs / "client/root.crt"),
        "--key",
        str(certs / "client/root.key"),
    ]
    wrong = raftkv(
        "serve", "--node-id", "node-5", "--data-dir", str(c.root / "data"), "--join", via,
        "--raft-address", node5.raft, "--http-address", node5.http, "--cacert", ca,
        *client_cert, "--user", "root", "--password", "wrong",
    )  # fmt: skip
    assert wrong.returncode == 2 and "invalid_credentials" in wrong.stderr, wrong
    c.start_node("node-5", args=["--cacert", ca, *client_cert, "--user", f"root:{ROOT_PASSWORD}"])
    wait_for("node-5 promoted", lambda: roles().get("node-5") == "voter", 90, c.dump_logs)

    # Writes through the new members reach every member (peer TLS both ways, forwarding).
    with Client([f"https://{node4.http}"], **root) as kv:
        kv.put("via-4", "x")
    for node in c.nodes.values():
        with Client([f"https://{node.http}"], **root) as kv:
            wait_for(
                f"{node.id} has via-4",
                lambda kv=kv: kv.get("via-4", consistency="stale").value == "x",
                30,
            )

    # The inspector: credentials used when given, and said to be missing when not.
    data = raftkv("inspect", "data", "--address", via, "--json", *creds)
    assert data.returncode == 0, data.stdout + data.stderr
    assert "via-4" in data.stdout
    anon = raftkv("inspect", "data", "--address", via, "--json", "--cacert", ca)
    assert anon.returncode == 1, anon
    for node_id, info in json.loads(anon.stdout)["nodes"].items():
        assert "give --user/--password or --token" in info["error"], (node_id, info)
    status = raftkv("inspect", "status", "--address", via, "--json", "--cacert", ca)
    assert status.returncode == 0, status.stdout + status.stderr
    assert len(json.loads(status.stdout)["nodes"]) == 5, status.stdout

    # SIGHUP re-reads the peer certificate for the node's own HTTPS calls too (forwarding).
    assert node4.proc is not None
    node4.proc.send_signal(signal.SIGHUP)
    wait_for(
        "node-4 reloaded its client contexts",
        lambda: re.search(r"tls_reloaded .*contexts=\d+ .*part=client", node4.log_text()),
        30,
        c.dump_logs,
    )
    with Client([f"https://{node4.http}"], **root) as kv:
        kv.put("after-hup", "y")  # forwarded by node-4 (a follower or not: it works)
