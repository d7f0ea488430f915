"""A real 3-node raftkv cluster in child processes, for the integration tests.

Rules:
- Every node is a real `raftkv serve --config FILE --node-id ID` process (the console script
  installed next to `sys.executable`), on 127.0.0.1, .2 and .3 (Linux routes all of 127/8 to
  loopback; elsewhere every node falls back to 127.0.0.1), with FREE ports picked at start:
  never the 8081-8083 / 9001-9003 that a cluster started by hand may hold.
- Each process writes its stdout+stderr to `<root>/logs/<node>.log`; a restart appends to the
  same file after a marker line, so one file tells a node's whole story. `dump_logs` prints
  them (the fixtures do on failure).
- Every wait is a poll with a deadline (`wait_for`), never a fixed sleep; deadlines are generous
  because a loaded 2-core machine can stall a process for seconds.
- HTTP goes through `http.client`, one fresh connection per request, no retries: a write is
  sent exactly once, so a test can tell acknowledged writes from unknown ones.
- `close()` kills (SIGKILL) every process still running and reaps it; the fixtures always call
  it, whatever the test did.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from raftkv.chaos.cluster import free_port as chaos_free_port
from raftkv.chaos.cluster import node_env

T = TypeVar("T")

NODE_IDS = ("node-1", "node-2", "node-3")
RESERVED_PORTS = frozenset({8081, 8082, 8083, 9001, 9002, 9003})
DEFAULT_DEADLINE_S = 30.0
POLL_S = 0.05


def raftkv_executable() -> Path:
    """The `raftkv` console script of the interpreter running the tests."""
    exe = Path(sys.executable).parent / "raftkv"
    if not exe.exists():
        raise RuntimeError(f"{exe} not found: install the project (pip install -e .) first")
    return exe


def _loopback_hosts(n: int) -> list[str]:
    """127.0.0.1, .2, .3 ... where they can be bound (Linux), else 127.0.0.1 for all."""
    hosts = [f"127.0.0.{i + 1}" for i in range(n)]
    for host in hosts[1:]:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
        except OSError:
            return ["127.0.0.1"] * n
    return hosts


def free_port(host: str, taken: set[int]) -> int:
    """A port nothing listens on now, below the kernel's ephemeral range (a `bind(0)` pick is
    ephemeral: an outgoing connection may take it before the node listens or restarts), never
    a reserved or taken one."""
    while True:
        port = chaos_free_port(host, taken)
        if port not in RESERVED_PORTS:
            return port


class NodeDied(AssertionError):
    """A node process exited while we waited on it: waiting longer cannot help."""


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    deadline_s: float = DEFAULT_DEADLINE_S,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` until it returns something other than None/False; fail after the deadline.

    Exceptions from `probe` count as "not yet" (the last one is reported on timeout)."""
    end = time.monotonic() + deadline_s
    last_exc: BaseException | None = None
    while True:
        try:
            result = probe()
        except NodeDied:
            raise
        except Exception as exc:
            last_exc = exc
            result = None
        if result is not None and result is not False:
            return result
        if time.monotonic() >= end:
            extra = f"; last error: {last_exc!r}" if last_exc else ""
            if on_timeout is not None:
                extra += f"\n{on_timeout()}"
            raise AssertionError(f"timed out after {deadline_s:.0f}s waiting for {what}{extra}")
        time.sleep(POLL_S)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def __str__(self) -> str:
        return f"{self.status} {self.body[:300]!r}"


class HttpError(Exception):
    """The request failed at the connection level. `sent` is False when the connection could not
    even be made (nothing was sent, so a write was certainly not applied); otherwise a write's
    outcome is unknown."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


def request(
    address: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 15.0,
) -> Reply:
    """One HTTP request on a fresh connection, sent once. Raises HttpError on a socket failure."""
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        conn.connect()
    except OSError as exc:
        conn.close()
        raise HttpError(f"{method} {address}{path[:80]}: {exc!r}", sent=False) from exc
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    except (OSError, http.client.HTTPException) as exc:
        raise HttpError(f"{method} {address}{path[:80]}: {exc!r}", sent=True) from exc
    finally:
        conn.close()


ADDED_FIELDS = frozenset({"revision", "create_revision", "mod_revision", "version"})


def seed_view(reply: Any) -> Any:
    """A /kv reply without the fields added by the data model (revisions): what the seed shows."""
    if not isinstance(reply, dict):
        return reply
    return {k: v for k, v in reply.items() if k not in ADDED_FIELDS}


def kv_path(key: str, query: str = "") -> str:
    path = "/kv/" + urllib.parse.quote(key, safe="")
    return f"{path}?{query}" if query else path


@dataclass(slots=True)
class Node:
    id: str
    host: str
    http_port: int
    raft_port: int
    log_path: Path
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    join_url: str | None = None  # a node added later: its first start is `serve --join URL`

    @property
    def http(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def raft(self) -> str:
        return f"{self.host}:{self.raft_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class Cluster:
    """A cluster of `raftkv serve` processes under `root`. Use as a context manager."""

    root: Path
    raft_extra: Mapping[str, object] = field(default_factory=dict)
    server_extra: Mapping[str, object] = field(default_factory=dict)
    storage_extra: Mapping[str, object] = field(default_factory=dict)
    log_level: str = "info"
    nodes: dict[str, Node] = field(init=False)
    config_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        hosts = _loopback_hosts(len(NODE_IDS))
        taken: set[int] = set()
        self.nodes = {}
        for node_id, host in zip(NODE_IDS, hosts, strict=True):
            self.nodes[node_id] = Node(
                id=node_id,
                host=host,
                http_port=free_port(host, taken),
                raft_port=free_port(host, taken),
                log_path=self.root / "logs" / f"{node_id}.log",
                data_dir=self.root / "data" / node_id,
            )
        self.config_path = self.root / "cluster.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def config(self) -> dict[str, object]:
        """The seed's config layout, with this cluster's addresses and options."""
        return {
            "cluster": {
                "name": f"integ-{os.getpid()}-{id(self) & 0xFFFF:x}",
                "bootstrap_id": NODE_IDS[0],
                "data_dir": str(self.root / "data"),
                "nodes": {n.id: n.raft for n in self.nodes.values()},
                "http": {n.id: n.http for n in self.nodes.values()},
            },
            "raft": {"election_timeout_ms": 100, "heartbeat_timeout_ms": 25, **self.raft_extra},
            **({"server": dict(self.server_extra)} if self.server_extra else {}),
            **({"storage": dict(self.storage_extra)} if self.storage_extra else {}),
            "logging": {"level": self.log_level},
        }

    # -- processes ------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, node_ids: Iterable[str] | None = None) -> None:
        for node_id in node_ids if node_ids is not None else self.nodes:
            self.start_node(node_id)

    def new_node(self, node_id: str, join_via: str) -> Node:
        """Register a node that is not in the config file; `start_node` then runs it with
        `--join` the cluster through `join_via`'s HTTP address (later starts: only --node-id
        and --data-dir, from its persisted member.json)."""
        assert node_id not in self.nodes, f"{node_id} exists"
        hosts = _loopback_hosts(len(self.nodes) + 1)
        host = hosts[len(self.nodes)]
        taken = {p for n in self.nodes.values() for p in (n.http_port, n.raft_port)}
        node = Node(
            id=node_id,
            host=host,
            http_port=free_port(host, taken),
            raft_port=free_port(host, taken),
            log_path=self.root / "logs" / f"{node_id}.log",
            data_dir=self.root / "data" / node_id,
            join_url=f"http://{self.nodes[join_via].http}",
        )
        self.nodes[node_id] = node
        return node

    def _command(self, node: Node) -> list[str]:
        if node.join_url is None:
            return ["serve", "--config", str(self.config_path), "--node-id", node.id]
        data = ["--node-id", node.id, "--data-dir", str(self.root / "data")]
        if node.starts > 1:
            return ["serve", *data, "--log-level", self.log_level]
        return [
            "serve",
            *data,
            "--join",
            node.join_url,
            "--raft-address",
            node.raft,
            "--http-address",
            node.http,
            "--log-level",
            self.log_level,
        ]

    def start_node(
        self,
        node_id: str,
        prefix: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        args: Iterable[str] = (),
    ) -> Node:
        """Start `node_id`; `prefix` runs it under another program (e.g. strace), `env` adds
        environment variables (test hooks), `args` more `raftkv serve` flags."""
        node = self.nodes[node_id]
        assert not node.running, f"{node_id} is already running"
        node.starts += 1
        with node.log_path.open("ab") as f:
            f.write(f"\n===== start #{node.starts} of {node_id} =====\n".encode())
            f.flush()
            node.proc = subprocess.Popen(
                [*prefix, str(raftkv_executable()), *self._command(node), *args],
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our Ctrl-C / signals never reach it by accident
                env={
                    **node_env(),  # keeps compiled bytecode: half a node start's CPU
                    "PYTHONUNBUFFERED": "1",
                    "KV_LOG_FORMAT": "console",
                    **(env or {}),
                },
            )
        return node

    def restart(self, node_id: str, sig: int = signal.SIGKILL) -> Node:
        self.kill(node_id, sig)
        return self.start_node(node_id)

    def kill(self, node_id: str, sig: int = signal.SIGKILL, wait_s: float = 20.0) -> int | None:
        """Send `sig` and wait (bounded) for the process to exit; returns its exit code."""
        node = self.nodes[node_id]
        proc = node.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        try:
            return proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise AssertionError(
                f"{node_id} did not exit within {wait_s}s of signal {sig}"
            ) from None

    def close(self) -> None:
        for node in self.nodes.values():
            proc = node.proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)

    def running(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.running]

    def dump_logs(self, tail_lines: int = 200) -> str:
        out = []
        for node in self.nodes.values():
            lines = node.log_text().splitlines()
            code = node.proc.poll() if node.proc is not None else "never started"
            out.append(f"----- {node.id} ({node.http}, exit: {code}) last {tail_lines} lines -----")
            out.extend(lines[-tail_lines:])
        return "\n".join(out)

    # -- HTTP -------------------------------------------------------------------------------
    def req(self, node_id: str, method: str, path: str, **kw: Any) -> Reply:
        return request(self.nodes[node_id].http, method, path, **kw)

    def put(self, node_id: str, key: str, value: str, *, as_json: bool = True) -> Reply:
        if as_json:
            body = json.dumps({"value": value}).encode()
            headers = {"Content-Type": "application/json"}
        else:
            body, headers = value.encode(), {"Content-Type": "application/x-www-form-urlencoded"}
        return self.req(node_id, "PUT", kv_path(key), body=body, headers=headers)

    def get(self, node_id: str, key: str, consistency: str | None = None) -> Reply:
        query = f"consistency={consistency}" if consistency else ""
        return self.req(node_id, "GET", kv_path(key, query))

    def delete(self, node_id: str, key: str) -> Reply:
        return self.req(node_id, "DELETE", kv_path(key))

    def local(self, node_id: str) -> dict[str, Any]:
        reply = self.req(node_id, "GET", "/cluster/local", timeout_s=5.0)
        assert reply.status == 200, reply
        result: dict[str, Any] = reply.json
        return result

    def status(self, node_id: str) -> dict[str, Any]:
        reply = self.req(node_id, "GET", "/cluster/status", timeout_s=10.0)
        assert reply.status == 200, reply
        result: dict[str, Any] = reply.json
        return result

    # -- waiting ----------------------------------------------------------------------------
    def wait_healthy(self, node_ids: Iterable[str] | None = None, deadline_s: float = 60.0) -> None:
        ids = list(node_ids) if node_ids is not None else [n.id for n in self.running()]
        for node_id in ids:

            def healthy(node_id: str = node_id) -> bool:
                node = self.nodes[node_id]
                if not node.running:
                    raise NodeDied(
                        f"{node_id} exited with {node.proc.poll() if node.proc else None}:\n"
                        + "\n".join(node.log_text().splitlines()[-40:])
                    )
                return self.req(node_id, "GET", "/health", timeout_s=2.0).status == 200

            wait_for(f"{node_id} /health", healthy, deadline_s, self.dump_logs)

    def leader(self, among: Iterable[str] | None = None) -> str | None:
        """The leader every given running node agrees on (via /cluster/local), else None."""
        ids = list(among) if among is not None else [n.id for n in self.running()]
        views = {}
        for node_id in ids:
            try:
                views[node_id] = self.local(node_id)
            except (HttpError, AssertionError):
                return None
        leaders = {v["leader_id"] for v in views.values()}
        if len(leaders) != 1:
            return None
        (leader,) = leaders
        if leader is None or leader not in views or views[leader]["role"] != "Leader":
            return None
        return str(leader)

    def wait_leader(self, among: Iterable[str] | None = None, deadline_s: float = 60.0) -> str:
        ids = list(among) if among is not None else None
        return wait_for(
            "a leader all running nodes agree on",
            lambda: self.leader(ids),
            deadline_s,
            self.dump_logs,
        )

    def wait_ready(self, node_ids: Iterable[str] | None = None, deadline_s: float = 60.0) -> str:
        """All given (default: running) nodes healthy and /ready, agreeing on one leader."""
        ids = list(node_ids) if node_ids is not None else [n.id for n in self.running()]
        self.wait_healthy(ids, deadline_s)
        for node_id in ids:
            wait_for(
                f"{node_id} /ready",
                lambda node_id=node_id: self.req(node_id, "GET", "/ready").status == 200,
                deadline_s,
                self.dump_logs,
            )
        return self.wait_leader(ids, deadline_s)

    def wait_caught_up(self, node_id: str, leader: str, deadline_s: float = 60.0) -> None:
        """`node_id` has applied at least what `leader` had committed when we started waiting."""
        target = self.local(leader)["commit_index"]
        wait_for(
            f"{node_id} to apply up to {target}",
            lambda: self.local(node_id)["applied_index"] >= target,
            deadline_s,
            self.dump_logs,
        )


MakeCluster = Callable[..., Cluster]
"""The `make_cluster` fixture: `make_cluster(raft_extra={...}, server_extra={...})`."""
