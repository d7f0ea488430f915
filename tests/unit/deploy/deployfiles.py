"""Readers for the deployment files, shared by the deploy tests.

Rules:
- No Docker engine and no Kubernetes exist here, so these helpers turn what a container would
  get (the image's ENV, the compose service's environment, files the image COPYs) into what a
  process outside Docker gets: the same variables, with container paths mapped to the repo or to
  a temporary directory, and container addresses rewritten to 127.0.0.1 and free ports.
- The Dockerfile reader understands only what our Dockerfile uses (comments, line continuations,
  JSON exec forms, `--flag=value` flags, `ENV k=v ...`); anything else is an error, so a new
  construct in the Dockerfile makes the tests fail loudly rather than be misread.
"""

from __future__ import annotations

import json
import shlex
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE_FILE = REPO / "docker-compose.yml"
KUBERNETES_DIR = REPO / "kubernetes"
VENV_BIN = Path(sys.executable).parent

# Variables a node reads (server/config.py FLAG_KEYS): never inherited from the test's own env.
NODE_ENV_VARS = frozenset(
    {"RAFT_NODE_ID", "KV_CONFIG", "KV_DATA_DIR", "KV_HTTP_PORT", "KV_RAFT_PORT"}
    | {"KV_LOG_LEVEL", "KV_LOG_FORMAT"}
)


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str  # upper case
    flags: tuple[str, ...]  # "--name=value"
    args: tuple[str, ...]  # exec-form items, or shell-form words (shlex) for keywords we split
    exec_form: bool
    line: int


@dataclass(frozen=True, slots=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword} in the stage FROM {self.base}: {found}"
        return found[0]

    def env(self) -> dict[str, str]:
        """ENV values, in order, without $VAR expansion (none of the node's variables use it)."""
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            for item in ins.args:
                key, sep, value = item.partition("=")
                assert sep, f"line {ins.line}: use the ENV key=value form"
                out[key] = value
        return out


_KNOWN = frozenset(
    {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "VOLUME", "USER", "EXPOSE", "HEALTHCHECK"}
    | {"STOPSIGNAL", "ENTRYPOINT", "CMD"}
)


def parse_dockerfile(text: str) -> list[Stage]:
    """The Dockerfile's stages, each with its instructions (see the module rules)."""
    logical: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            continue  # comments are dropped even inside a continued instruction, as Docker does
        if not pending:
            start = number
            if not stripped:
                continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append((start, pending + stripped))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"

    stages: list[Stage] = []
    current: list[Instruction] = []
    base, name = "", None
    for line, content in logical:
        keyword, _, rest = content.partition(" ")
        keyword = keyword.upper()
        assert keyword in _KNOWN, f"line {line}: {keyword} is not understood by these tests"
        flags: list[str] = []
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        exec_form = rest.startswith("[")
        if exec_form:
            parsed = json.loads(rest)
            assert isinstance(parsed, list) and all(isinstance(x, str) for x in parsed)
            args: tuple[str, ...] = tuple(parsed)
        elif keyword == "HEALTHCHECK":
            sub, _, cmd = rest.partition(" ")
            cmd = cmd.strip()
            exec_form = cmd.startswith("[")
            args = (sub, *json.loads(cmd)) if exec_form else (sub, cmd)
        else:
            args = tuple(shlex.split(rest))
        ins = Instruction(keyword, tuple(flags), args, exec_form, line)
        if keyword == "FROM":
            if base:
                stages.append(Stage(base, name, tuple(current)))
            base = args[0]
            name = args[2] if len(args) == 3 and args[1].upper() == "AS" else None
            current = []
        else:
            assert base, f"line {line}: {keyword} before FROM"
            current.append(ins)
    assert base, "no FROM in the Dockerfile"
    stages.append(Stage(base, name, tuple(current)))
    return stages


def final_stage() -> Stage:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))[-1]


def image_file(stage: Stage, container_path: str) -> Path:
    """The repo file that the image holds at `container_path` (through a COPY from the context)."""
    target = PurePosixPath(container_path)
    for ins in stage.all("COPY"):
        if any(f.startswith("--from") for f in ins.flags):
            continue
        *sources, dest = ins.args
        for source in sources:
            assert source.endswith("/") and dest.endswith("/"), "copy directories as dir/ dir/"
            root = PurePosixPath(dest)
            if root in target.parents:
                return REPO / source / target.relative_to(root)
    raise AssertionError(f"{container_path} is not copied into the image from the build context")


def image_command(stage: Stage) -> list[str]:
    """ENTRYPOINT + CMD (both exec form) as the container runs them, with no extra args."""
    entry, cmd = stage.one("ENTRYPOINT"), stage.one("CMD")
    assert entry.exec_form and cmd.exec_form, "ENTRYPOINT and CMD must use the exec form"
    return [*entry.args, *cmd.args]


def load_compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):  # the "KEY=value" list form
        raw = dict(item.split("=", 1) for item in raw)
    return {str(k): str(v) for k, v in raw.items()}


def container_env(stage: Stage, service: Mapping[str, Any]) -> dict[str, str]:
    """The node's variables inside the container: the image's ENV, then the service's."""
    env = {k: v for k, v in stage.env().items() if k in NODE_ENV_VARS}
    env.update({k: v for k, v in service_env(service).items() if k in NODE_ENV_VARS})
    return env


def kubernetes_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(KUBERNETES_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                assert isinstance(doc, dict), path
                docs.append(doc)
    return docs


def kubernetes_kind(kind: str) -> dict[str, Any]:
    found = [d for d in kubernetes_docs() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in kubernetes/, found {len(found)}"
    return found[0]


def free_ports(count: int) -> list[int]:
    """Distinct ports free on every interface right now (all held open until all are chosen)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind(("0.0.0.0", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def localize_config(
    doc: Mapping[str, Any], ports: Mapping[int, int], data_dir: Path | None = None
) -> dict[str, Any]:
    """The cluster config with every node address at 127.0.0.1 and each port P at ports[P]."""

    def rewrite(addr: str) -> str:
        _, _, port = addr.rpartition(":")
        return f"127.0.0.1:{ports[int(port)]}"

    out = json.loads(json.dumps(doc))  # a deep copy of plain YAML data
    cluster = out["cluster"]
    if data_dir is not None:
        cluster["data_dir"] = str(data_dir)
    for section in ("nodes", "http"):
        cluster[section] = {node: rewrite(addr) for node, addr in cluster[section].items()}
    return dict(out)
