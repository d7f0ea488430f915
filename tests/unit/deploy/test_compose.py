"""docker-compose.yml: accepted by docker-compose and by `docker stack`, and consistent with the
image and the node's configuration.

The Compose tools check the schema (and, for stack, the Swarm subset) without a Docker engine:
`docker-compose config` (Debian package docker-compose) and `docker stack config` (docker CLI).
When a tool is absent the test says so and skips. What the containers would run is resolved with
`load_settings` from each service's env over the image's ENV and the baked config file.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from raftkv.server.config import Address, Settings, load_settings

from .deployfiles import COMPOSE_FILE, REPO, container_env, final_stage, image_file, load_compose

SERVICES = ("kvstore-node-1", "kvstore-node-2", "kvstore-node-3")
NETWORK = "kvstore-network"
IMAGE = "distributed-kv-store:latest"


def _tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


def test_docker_compose_config_accepts_the_file() -> None:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    result = _tool("docker-compose", "-f", str(COMPOSE_FILE), "config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert sorted(resolved["services"]) == list(SERVICES)
    for name in SERVICES:
        assert resolved["services"][name]["networks"] == {NETWORK: None}


def _stack_config_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return _tool("docker", "stack", "config", "--help").returncode == 0


def test_docker_stack_accepts_the_file() -> None:
    if not _stack_config_available():
        pytest.skip("the docker CLI with `docker stack config` (Docker >= 25) is not installed")
    result = _tool("docker", "stack", "config", "-c", str(COMPOSE_FILE))
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    for name in SERVICES:
        service = resolved["services"][name]
        assert service["image"] == IMAGE  # stack ignores build: and needs a built image
        assert service["deploy"]["replicas"] == 1


def _service(name: str) -> dict[str, Any]:
    service = load_compose()["services"][name]
    assert isinstance(service, dict)
    return service


def _settings(name: str) -> Settings:
    final = final_stage()
    env = container_env(final, _service(name))
    # The config path is a path inside the image: read the repo file that the image copies there.
    return load_settings({"config": image_file(final, env["KV_CONFIG"])}, env=env)


def test_each_service_resolves_to_its_node() -> None:
    views = {name: _settings(name) for name in SERVICES}
    for i, name in enumerate(SERVICES, 1):
        s = views[name]
        assert s.node_id == f"node-{i}"
        assert (s.http_listen, s.raft_listen) == (
            Address("0.0.0.0", 8080 + i),
            Address("0.0.0.0", 9000 + i),
        )
        # What it advertises is its service name, which Docker's DNS resolves on the network.
        assert s.raft_address == Address(name, 9000 + i)
        assert s.http_address == Address(name, 8080 + i)
        assert s.data_dir == Path("/data") / s.node_id
        assert s.bootstrap_id == "node-1"
    # Every node has the same view of every peer (a port set only in one service's env would
    # make the others dial the wrong port).
    first = views[SERVICES[0]]
    for s in views.values():
        assert s.raft_peer_strings() == first.raft_peer_strings()
        assert s.http_peer_strings() == first.http_peer_strings()
    assert {a.host for a in first.raft_peers.values()} == set(SERVICES)


def test_ports_volumes_network_and_deploy() -> None:
    doc = load_compose()
    assert list(doc["networks"]) == [NETWORK]
    # No driver: compose picks bridge, `docker stack deploy` picks overlay (bridge would fail).
    assert not (doc["networks"][NETWORK] or {}).get("driver")
    volumes = set()
    for name in SERVICES:
        service, s = _service(name), _settings(name)
        published = {tuple(int(p) for p in str(m).split(":")) for m in service["ports"]}
        # Host port = container port = the port the node listens on and advertises; the Raft
        # port is reachable on kvstore-network only, never published on the host (issue 10).
        assert published == {(s.http_listen.port, s.http_listen.port)}
        assert all(s.raft_listen.port not in pair for pair in published)
        mounts = [str(v).split(":") for v in service["volumes"]]
        assert len(mounts) == 1 and Path(mounts[0][1]) in s.data_dir.parents
        volumes.add(mounts[0][0])
        assert service["networks"] == [NETWORK]
        assert service["image"] == IMAGE and service["build"] == "."
        assert service["restart"] == "unless-stopped"
        deploy = service["deploy"]
        assert deploy["replicas"] == 1
        assert deploy["restart_policy"]["condition"] == "any"
        # Never two tasks of one node on one volume at once.
        assert deploy["update_config"]["order"] == "stop-first"
        assert "placement" not in deploy
    assert volumes == set(doc["volumes"]) and len(volumes) == len(SERVICES)
