"""docker-compose.tls.yml: mutual TLS between the compose nodes, certificates as compose secrets.

Checked without a Docker engine: each service mounts its OWN node's peer certificate and key and
the CA, under the targets the baked TLS config names; that config is the plain one plus
`tls.peer`; docker-compose accepts the two files together once `raftkv certs init` made the
certificates; and a node resolves the TLS config to its certificate files.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from raftkv.server.config import load_settings
from raftkv.transport.certs import init_certs
from raftkv.transport.tls import PeerTls, TlsFiles

from .deployfiles import REPO, final_stage, image_file, load_compose, service_env

OVERLAY = REPO / "docker-compose.tls.yml"
TLS_CONFIG = "/etc/raftkv/docker-cluster-tls.yaml"


def overlay() -> dict[str, Any]:
    doc = yaml.safe_load(OVERLAY.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def test_each_node_mounts_its_own_certificate_and_the_ca() -> None:
    base, tls = load_compose(), overlay()
    assert set(tls["services"]) == set(base["services"])
    for name, service in tls["services"].items():
        node_id = service_env(base["services"][name])["RAFT_NODE_ID"]
        assert service["environment"]["KV_CONFIG"] == TLS_CONFIG
        mounted = {s["target"]: tls["secrets"][s["source"]]["file"] for s in service["secrets"]}
        assert mounted == {
            "ca.crt": "./certs/ca.crt",
            "peer.crt": f"./certs/{node_id}/peer.crt",
            "peer.key": f"./certs/{node_id}/peer.key",
        }
        key = next(s for s in service["secrets"] if s["target"] == "peer.key")
        assert key["mode"] == 0o400 and key["uid"] == "10001"  # the image's user only


def test_tls_config_is_the_plain_one_plus_peer_tls_on_the_secrets() -> None:
    stage = final_stage()
    plain = yaml.safe_load(image_file(stage, "/etc/raftkv/docker-cluster.yaml").read_text())
    tls = yaml.safe_load(image_file(stage, TLS_CONFIG).read_text())
    assert tls.pop("tls") == {
        "peer": {
            "cert": "/run/secrets/peer.crt",
            "key": "/run/secrets/peer.key",
            "ca": "/run/secrets/ca.crt",
        }
    }
    assert tls == plain


def test_docker_compose_accepts_both_files_with_generated_certificates(tmp_path: Path) -> None:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    for name in ("docker-compose.yml", "docker-compose.tls.yml"):
        shutil.copy(REPO / name, tmp_path / name)
    init_certs(tmp_path / "certs", ["node-1", "node-2", "node-3"], ["localhost"])
    result = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "-f", "docker-compose.tls.yml", "config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    for service in resolved["services"].values():
        assert service["environment"]["KV_CONFIG"] == TLS_CONFIG
        assert {s["target"] for s in service["secrets"]} == {"ca.crt", "peer.crt", "peer.key"}
        assert "9001" not in str(service.get("ports", ""))  # still no Raft port on the host


def test_a_node_resolves_the_tls_config_to_its_certificate(tmp_path: Path) -> None:
    stage = final_stage()
    text = image_file(stage, TLS_CONFIG).read_text(encoding="utf-8")
    init_certs(tmp_path / "certs", ["node-2"], ["localhost"])
    secrets = tmp_path / "run-secrets"  # what compose mounts at /run/secrets/ for node-2
    secrets.mkdir()
    for target, src in (("ca.crt", "ca.crt"), ("peer.crt", "node-2/peer.crt")):
        shutil.copy(tmp_path / "certs" / src, secrets / target)
    shutil.copy(tmp_path / "certs" / "node-2" / "peer.key", secrets / "peer.key")
    config = tmp_path / "cluster.yaml"
    config.write_text(text.replace("/run/secrets", str(secrets)), encoding="utf-8")
    s = load_settings({"config": str(config), "node_id": "node-2"}, env={})
    assert s.tls_peer == TlsFiles(secrets / "peer.crt", secrets / "peer.key", secrets / "ca.crt")
    PeerTls(s.tls_peer)  # the files form a usable pair
