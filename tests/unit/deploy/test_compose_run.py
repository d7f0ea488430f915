"""The three compose services, run outside Docker: each container's command and env, as real
`raftkv serve` processes on 127.0.0.1.

What a container would get is kept (ENTRYPOINT + CMD, the image's ENV under the service's env,
the baked config, listening on 0.0.0.0); only what Docker provides is replaced: service names
resolve to 127.0.0.1, ports move to free ones (config and KV_*_PORT alike), /data and the config
path move to a temporary directory. The nodes must elect a leader, replicate a write, pass the
image's HEALTHCHECK, and stop with exit code 0 on SIGTERM.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from .deployfiles import (
    NODE_ENV_VARS,
    VENV_BIN,
    container_env,
    final_stage,
    free_ports,
    image_command,
    image_file,
    load_compose,
    localize_config,
)

T = TypeVar("T")
DEADLINE_S = 60.0  # a bound on condition waits: three cold Python starts on a loaded 2-core box

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("raftkv.transport.tcp") is None,
        reason="raftkv.transport.tcp is not on this branch yet: `raftkv serve` cannot start",
    ),
]


def _wait(what: str, probe: Callable[[], T | None], nodes: dict[str, dict[str, Any]]) -> T:
    """Poll `probe` until it returns a value; fail if the deadline passes or a node exits."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = probe()
        if value is not None:
            return value
        for name, node in nodes.items():
            code = node["proc"].poll()
            assert code is None, f"{name} exited ({code}) while waiting for {what}\n{_logs(nodes)}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{_logs(nodes)}"
        time.sleep(0.05)


def _get(url: str) -> tuple[int, Any] | None:
    """(status, JSON body), or None while nothing listens there yet."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            return None
        raise


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Any]]:
    final = final_stage()
    services = load_compose()["services"]
    # Every port a container listens on: the published HTTP ports and the Raft ports, which
    # compose keeps on its private network (not published on the host).
    container_ports = sorted(
        {int(str(m).split(":")[1]) for s in services.values() for m in s.get("ports", [])}
        | {
            int(container_env(final, s)[var])
            for s in services.values()
            for var in ("KV_HTTP_PORT", "KV_RAFT_PORT")
        }
    )
    ports = dict(zip(container_ports, free_ports(len(container_ports)), strict=True))
    base_env = {k: v for k, v in os.environ.items() if k not in NODE_ENV_VARS}
    base_env["PATH"] = f"{VENV_BIN}{os.pathsep}{base_env.get('PATH', '')}"

    nodes: dict[str, dict[str, Any]] = {}
    procs: list[subprocess.Popen[str]] = []
    try:
        for name, service in services.items():
            env = container_env(final, service)
            root = tmp_path / name  # the container's filesystem: its config and its /data
            root.mkdir()
            config = yaml.safe_load(image_file(final, env["KV_CONFIG"]).read_text("utf-8"))
            local = localize_config(config, ports)  # KV_DATA_DIR overrides its data_dir
            config_path = root / "cluster.yaml"
            config_path.write_text(yaml.safe_dump(local), encoding="utf-8")
            assert env["KV_DATA_DIR"] == "/data"
            env.update(
                KV_CONFIG=str(config_path),
                KV_DATA_DIR=str(root / "data"),
                KV_HTTP_PORT=str(ports[int(env["KV_HTTP_PORT"])]),
                KV_RAFT_PORT=str(ports[int(env["KV_RAFT_PORT"])]),
            )
            argv = image_command(final) + [str(a) for a in service.get("command", [])]
            argv[0] = str(VENV_BIN / argv[0])
            log = (root / "node.log").open("w", encoding="utf-8")
            with log:
                proc = subprocess.Popen(
                    argv, env={**base_env, **env}, cwd=root, stdout=log, stderr=log, text=True
                )
            procs.append(proc)
            nodes[name] = {"env": env, "proc": proc, "root": root, "http": env["KV_HTTP_PORT"]}
        yield {"nodes": nodes, "procs": procs, "base_env": base_env, "final": final}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def _logs(nodes: dict[str, dict[str, Any]]) -> str:
    return "\n".join(
        f"--- {name}\n" + (node["root"] / "node.log").read_text("utf-8")[-3000:]
        for name, node in nodes.items()
    )


def _url(node: dict[str, Any], path: str) -> str:
    return f"http://127.0.0.1:{node['http']}{path}"


def test_compose_services_form_a_cluster_outside_docker(cluster: dict[str, Any]) -> None:
    nodes, procs = cluster["nodes"], cluster["procs"]
    for i, (name, node) in enumerate(nodes.items(), 1):
        status = _wait(f"{name} to answer", lambda n=node: _get(_url(n, "/cluster/local")), nodes)
        assert status[0] == 200
        assert status[1]["node_id"] == f"node-{i}"
        assert status[1]["http_address"] == f"127.0.0.1:{node['http']}"

    def ready(node: dict[str, Any]) -> str | None:
        got = _get(_url(node, "/ready"))
        return got[1]["leader"] if got and got[0] == 200 else None

    leaders = {
        name: _wait(f"{name} ready", lambda n=node: ready(n), nodes) for name, node in nodes.items()
    }
    assert len(set(leaders.values())) == 1

    first, *_, last = nodes.values()
    body = json.dumps({"value": "Running in Docker!"}).encode()
    put = urllib.request.Request(
        _url(first, "/kv/docker:test"),
        data=body,
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(put, timeout=5) as resp:
        assert resp.status == 200
    got = _get(_url(last, "/kv/docker:test"))
    states = [_get(_url(n, "/cluster/local")) for n in nodes.values()]
    status, reply = got
    seed_fields = {k: reply[k] for k in ("key", "value") if isinstance(reply, dict) and k in reply}
    assert (status, seed_fields) == (200, {"key": "docker:test", "value": "Running in Docker!"}), (
        states,
        _logs(nodes),
    )

    # The image's HEALTHCHECK, with each container's env, says healthy.
    check = cluster["final"].one("HEALTHCHECK")
    for node in nodes.values():
        result = subprocess.run(
            [sys.executable, *check.args[2:]],
            env={**cluster["base_env"], **node["env"]},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr + _logs(nodes)

    # docker stop / Kubernetes send SIGTERM: each node exits 0 well within its grace period.
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        assert proc.returncode == 0, _logs(nodes)
    for node in nodes.values():
        assert (node["root"] / "data" / node["env"]["RAFT_NODE_ID"]).is_dir()
