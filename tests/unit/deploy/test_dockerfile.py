"""The Dockerfile and .dockerignore agree with the application (no Docker engine here to build).

Checked as text: the base, the non-root user, the /data volume, the exposed ports against the
config defaults, the entrypoint against the installed console script, the baked config. The
HEALTHCHECK command itself is run, outside Docker, with the env a container would have.
"""

from __future__ import annotations

import fnmatch
import http.server
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from raftkv.server.config import DEFAULT_HTTP_BASE_PORT, load_settings

from .deployfiles import (
    DOCKERIGNORE,
    NODE_ENV_VARS,
    REPO,
    VENV_BIN,
    container_env,
    final_stage,
    image_command,
    image_file,
    load_compose,
    localize_config,
    parse_dockerfile,
)


def test_parser_reads_continuations_flags_and_exec_forms() -> None:
    stages = parse_dockerfile(
        "FROM a:1 AS b\nRUN x \\\n  # note\n  y\nFROM c\n"
        'HEALTHCHECK --interval=1s \\\n  CMD ["p", "-c", "q"]\nENV A=1 B="two words"\n'
        'ENTRYPOINT ["e"]\nCMD []\n'
    )
    assert [(s.base, s.name) for s in stages] == [("a:1", "b"), ("c", None)]
    assert stages[0].one("RUN").args == ("x", "y")
    check = stages[1].one("HEALTHCHECK")
    assert (check.flags, check.args, check.exec_form) == (
        ("--interval=1s",),
        ("CMD", "p", "-c", "q"),
        True,
    )
    assert stages[1].env() == {"A": "1", "B": "two words"}
    assert image_command(stages[1]) == ["e"]
    with pytest.raises(AssertionError, match="ADD is not understood"):
        parse_dockerfile("FROM a\nADD x y\n")


def test_base_user_volume_and_workdir() -> None:
    stages = parse_dockerfile((REPO / "Dockerfile").read_text(encoding="utf-8"))
    assert all(s.base == "python:3.11-slim" for s in stages)
    final = stages[-1]
    user = final.one("USER").args[0]
    uid, _, gid = user.partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    volume = final.one("VOLUME")
    assert volume.args == ("/data",)
    assert final.env()["KV_DATA_DIR"] == "/data"
    # The volume exists and is chowned before VOLUME (changes after it would be discarded).
    run_before_volume = [i for i in final.all("RUN") if i.line < volume.line]
    assert any(
        "chown" in " ".join(i.args) and "/data" in " ".join(i.args) for i in run_before_volume
    )
    assert final.one("USER").line > max(i.line for i in final.all("RUN"))  # no RUN as root after


def test_exposed_ports_are_the_default_first_node() -> None:
    final = final_stage()
    exposed = {int(p) for p in final.one("EXPOSE").args}
    seed = load_settings(
        {"config": REPO / "config" / "multi-node-cluster.yaml", "node_id": "node-1"}, env={}
    )
    docker = load_settings(
        {"config": image_file(final, final.env()["KV_CONFIG"]), "node_id": "node-1"}, env={}
    )
    assert seed.http_address.port == DEFAULT_HTTP_BASE_PORT
    assert exposed == {seed.http_address.port, seed.raft_address.port}
    assert exposed == {docker.http_listen.port, docker.raft_listen.port}


def test_entrypoint_is_the_installed_console_script() -> None:
    final = final_stage()
    command = image_command(final)
    assert command[:2] == ["raftkv", "serve"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    assert "raftkv" in scripts
    assert final.one("STOPSIGNAL").args == ("SIGTERM",)  # serve handles SIGTERM itself
    # The build installs the project itself from the lock (uv sync --frozen, non-editable) into
    # a virtualenv that the run stage copies and puts first on PATH, where ENTRYPOINT finds
    # `raftkv`; uv is the version the scripts pin.
    build = parse_dockerfile((REPO / "Dockerfile").read_text(encoding="utf-8"))[0]
    runs = [" ".join(i.args) for i in build.all("RUN")]
    assert any("uv sync --frozen --no-editable" in run for run in runs)
    assert build.env()["UV_PROJECT_ENVIRONMENT"] == "/opt/venv"
    pinned = re.search(r'RAFTKV_UV_VERSION="([^"]+)"', (REPO / "scripts/_venv.sh").read_text())
    assert pinned and any(f"uv=={pinned.group(1)}" in run for run in runs)
    venv = [c.args[0] for c in final.all("COPY") if f"--from={build.name}" in c.flags]
    assert venv == ["/opt/venv"]
    assert final.env()["PATH"].startswith("/opt/venv/bin:")


def test_baked_config_is_valid_for_every_compose_node() -> None:
    final = final_stage()
    path = image_file(final, final.env()["KV_CONFIG"])
    assert path.is_file()
    nodes = yaml.safe_load(path.read_text(encoding="utf-8"))["cluster"]["nodes"]
    for node in nodes:
        settings = load_settings({"config": path, "node_id": node}, env={})
        assert settings.data_dir == Path("/data") / node
        assert settings.raft_listen.host == settings.http_listen.host == "0.0.0.0"


def _ignored(rel: str, patterns: list[str]) -> bool:
    """.dockerignore's rule for the pattern forms our file uses: the last matching line wins,
    and a pattern that matches a directory matches everything under it."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        pat = pattern.removeprefix("!").rstrip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(part, pat[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatchcase(prefix, pat) for prefix in prefixes)
        if hit:
            ignored = not pattern.startswith("!")
    return ignored


def test_dockerignore_sends_only_what_the_build_needs() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for kept in (
        "pyproject.toml",
        "uv.lock",
        "src/raftkv/__init__.py",
        "src/raftkv/server/config.py",
        "src/raftkv/py.typed",
        "config/docker-cluster.yaml",
        "README.md",
    ):
        assert not _ignored(kept, patterns), kept
    for dropped in (
        ".venv/bin/python",
        ".git/HEAD",
        "data/cluster/node-1/raft.db",
        "tests/unit/deploy/test_dockerfile.py",
        "src/raftkv/__pycache__/x.pyc",
        "src/raftkv.egg-info/PKG-INFO",
        "kubernetes/statefulset.yaml",
    ):
        assert _ignored(dropped, patterns), dropped
    # Everything the package ships is in the context.
    for path in (REPO / "src").rglob("*"):
        rel = path.relative_to(REPO).as_posix()
        if path.is_file() and "__pycache__" not in rel and ".egg-info" not in rel:
            assert not _ignored(rel, patterns), rel


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200
    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        self.send_response(self.status if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_healthcheck_asks_the_node_on_its_own_port(
    tmp_path: Path, health_server: http.server.ThreadingHTTPServer
) -> None:
    final = final_stage()
    check = final.one("HEALTHCHECK")
    assert check.exec_form and check.args[0] == "CMD" and check.args[1] == "python"
    flags = dict(f.removeprefix("--").split("=", 1) for f in check.flags)
    assert set(flags) >= {"interval", "timeout", "start-period", "retries"}

    # node-2 of the compose file, as its container sees things, with its HTTP port moved to
    # where the fake node listens (KV_HTTP_PORT is what the healthcheck must follow).
    service = load_compose()["services"]["kvstore-node-2"]
    env = container_env(final, service)
    config = yaml.safe_load(image_file(final, env["KV_CONFIG"]).read_text(encoding="utf-8"))
    ports = {p: p for p in (8081, 8082, 8083, 9001, 9002, 9003)}
    port = health_server.server_address[1]
    ports[8082] = port
    local = localize_config(config, ports, tmp_path / "data")
    local["cluster"]["listen"] = "0.0.0.0"  # as in the container: the check must dial 127.0.0.1
    config_path = tmp_path / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(local), encoding="utf-8")
    env.update(KV_CONFIG=str(config_path), KV_HTTP_PORT=str(port))
    base = {k: v for k, v in os.environ.items() if k not in NODE_ENV_VARS}
    base["PATH"] = f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}"
    argv = [sys.executable, *check.args[2:]]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env={**base, **env}, capture_output=True, text=True, timeout=30)

    _Health.seen = []
    _Health.status = 200
    ok = run()
    assert ok.returncode == 0, ok.stderr
    assert _Health.seen == ["/health"]
    _Health.status = 503
    assert run().returncode != 0
    health_server.shutdown()
    health_server.server_close()
    refused = run()
    # Nobody listens: the check fails. (Not asserted: urllib's and libc's wording of it.)
    assert refused.returncode != 0
