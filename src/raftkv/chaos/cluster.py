"""The chaos run's own cluster: real `raftkv serve` processes on 127.0.0.1, .2, .3 ...

Rules:
- The cluster is private to the run: free ports, a config file and data under the run's
  directory. Each node's output goes to `<dir>/logs/<node>.log` (appended across restarts).
- Nodes are started by a command prefix (`node_cmd`, default: this Python running the `raftkv`
  CLI) followed by `serve --config FILE --node-id ID`, so a test can launch a patched node.
- A node dies with the chaos process (PR_SET_PDEATHSIG): a killed run leaves no node behind.
  Processes are started from the event loop's thread only: the death signal follows the thread
  that forked.
- Every fault is a plain signal: kill -9, SIGSTOP, SIGCONT. `stop()` resumes a paused node before
  terminating it, and kills it if it does not exit in time.
- A node that exits without being killed by us is a crash; `reap_crashes()` reports it once.
  Two exceptions, for the membership scenario: a node on its way out of the cluster (`leaving`)
  may exit 0 (a removed node stops by itself) or 2 (restarted by a fault's undo just before its
  removal, it refuses to start once it learns it was removed) and is never restarted; a node
  still joining (`joining`) is watched by whoever started it (a refused join is retried, not a
  crash).
- The node set can change while the run goes on (`add_node`, `retire`): `ids` are the current
  members; every process ever started stays in `nodes`, so that it is stopped at the end.
  New nodes take a free address of 127.0.0.1-9 (one whose previous node is gone) and fresh
  ports (never one used before in the run: the firewall matches ports).
- The admin requests (status, readiness) come from the admin source address, which partitions
  never cut (see `netfilter`).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from raftkv.chaos import httpclient
from raftkv.chaos.netfilter import Endpoint

ADMIN_TIMEOUT_S: Final = 0.5
LEAVING_EXITS: Final = (0, 2)  # a removed node stops (0) or refuses to start (2) by itself
_PR_SET_PDEATHSIG: Final = 1


@dataclass(frozen=True, slots=True)
class NodeSpec:
    node_id: str
    host: str
    raft_port: int
    http_port: int

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, (self.raft_port, self.http_port))


@dataclass(frozen=True, slots=True)
class Crash:
    node_id: str
    at: float  # run clock
    returncode: int
    log_tail: str


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' ports (Linux; a common default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str, taken: set[int], rng: random.Random | None = None) -> int:
    """A port free on `host` now, not in `taken` (which it joins), and below the ephemeral range:
    a port from `bind(0)` is ephemeral, and in the seconds a node takes to start, any outgoing
    connection on the box (ours or another program's) may take it; a killed node restarted
    later would find it taken for good."""
    rng = rng or random.Random()
    high = min(ephemeral_range()[0], 65536)
    low = max(1024, high - 16384)
    for _ in range(1000):
        port = rng.randrange(low, high)
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise OSError(f"no free port on {host} in {low}..{high - 1}")


def plan_nodes(hosts: Sequence[str]) -> list[NodeSpec]:
    taken: set[int] = set()  # distinct across hosts: the firewall rules match ports too
    return [
        NodeSpec(f"node-{i}", host, free_port(host, taken), free_port(host, taken))
        for i, host in enumerate(hosts, start=1)
    ]


def config_yaml(
    specs: Sequence[NodeSpec],
    data_dir: Path,
    *,
    snapshot_every: int,
    leader_wait_ms: int,
    request_timeout_ms: int,
    log_level: str = "info",
) -> str:
    """The cluster's config file (the seed's format; JSON strings are valid YAML scalars)."""
    q = _quote
    lines = [
        "cluster:",
        '  name: "raftkv-chaos"',
        f"  bootstrap_id: {q(specs[0].node_id)}",
        f"  data_dir: {q(str(data_dir))}",
        "  nodes:",
        *(f"    {q(s.node_id)}: {q(f'{s.host}:{s.raft_port}')}" for s in specs),
        "  http:",
        *(f"    {q(s.node_id)}: {q(f'{s.host}:{s.http_port}')}" for s in specs),
        "raft:",
        "  election_timeout_ms: 100",  # the seed's timing, never relaxed for chaos
        "  heartbeat_timeout_ms: 25",
        f"  snapshot_every: {snapshot_every}",
        "server:",
        f"  leader_wait_ms: {leader_wait_ms}",
        f"  request_timeout_ms: {request_timeout_ms}",
        "logging:",
        f"  level: {q(log_level)}",
        "",
    ]
    return "\n".join(lines)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def default_node_cmd() -> list[str]:
    return [sys.executable, "-c", "from raftkv.cli.main import main; main()"]


def parse_node_cmd(value: str | None) -> list[str]:
    """`--node-cmd` / `RAFTKV_CHAOS_NODE_CMD`: a shell-quoted command prefix (empty: default)."""
    return shlex.split(value) if value else default_node_cmd()


def node_env() -> dict[str, str]:
    """The nodes' environment: ours, except that with PYTHONDONTWRITEBYTECODE set, compiled
    bytecode is kept after all -- in a cache under the system temp directory, never beside the
    sources: every node (re)start would otherwise compile all its modules again, which doubles
    its CPU time (seconds on a loaded 2-core box, and the membership scenario starts many)."""
    env = dict(os.environ)
    if env.pop("PYTHONDONTWRITEBYTECODE", None) is not None and "PYTHONPYCACHEPREFIX" not in env:
        env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "raftkv-chaos-pycache")
    return env


def _death_signal_setter() -> Callable[[], None] | None:
    """A preexec_fn making the child die with us (Linux), or None elsewhere. The symbol is
    looked up here, in the parent: only the call itself runs between fork and exec, so the
    child never needs the dynamic loader's lock, which another thread may hold at fork time."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_death_signal() -> None:  # pragma: no cover - runs in the child
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return set_death_signal


class NodeProcess:
    """One node's process across kills and restarts.

    `args` (default: `serve --config CONFIG --node-id ID`) is asked again at every start, so a
    joining node's command can name a member that is up at that time; `restart_args`, when set
    and not answering None, replaces it for the starts after the first."""

    def __init__(
        self,
        spec: NodeSpec,
        cmd: Sequence[str],
        config: Path,
        log: Path,
        args: Callable[[], list[str]] | None = None,
    ) -> None:
        self.spec = spec
        self._prefix = list(cmd)
        self._args = args or (lambda: ["serve", "--config", str(config), "--node-id", spec.node_id])
        self._cmd = [*self._prefix, *self._args()]
        # For starts after the first, when set: the args instead (None: the usual ones).
        self.restart_args: Callable[[], list[str] | None] | None = None
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._expected_exit = False  # we killed or stopped it: its exit is no crash
        self.starts = 0
        self.leaving = False  # being removed: never restarted; LEAVING_EXITS expected
        self.joining = False  # its starter watches its exits until it is a member

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        if self.running or self.leaving:
            return
        again = self.restart_args() if self.starts and self.restart_args is not None else None
        self._cmd = [*self._prefix, *(again or self._args())]
        with self._log.open("ab") as out:
            stamp = datetime.now(UTC).isoformat(timespec="microseconds")
            out.write(f"---- {stamp} start {self.starts + 1}: {' '.join(self._cmd)}\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                self._cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_death_signal_setter(),
                env=node_env(),
            )
        self.starts += 1
        self.paused = False
        self._expected_exit = False

    def kill(self) -> None:
        """kill -9, and wait for the process to be gone."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._expected_exit = True
        self._proc.kill()
        self._proc.wait()
        self.paused = False

    def pause(self) -> None:
        if self.running and not self.paused:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.paused and self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGCONT)
            self.paused = False

    def terminate(self) -> None:
        """SIGTERM without waiting (after SIGCONT if paused): lets several nodes stop at once."""
        if self._proc is None:
            return
        self._expected_exit = True
        self.resume()
        if self._proc.poll() is None:
            self._proc.terminate()

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM (after SIGCONT if paused); SIGKILL if it is still there after `timeout_s`."""
        if self._proc is None:
            return
        self._expected_exit = True
        self.resume()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    @property
    def killed(self) -> bool:
        """We killed or stopped it (its exit is expected)."""
        return self._expected_exit

    def exit_code(self) -> int | None:
        """The exit code once the process has ended (None while it runs or never started)."""
        return self._proc.poll() if self._proc is not None else None

    def crashed(self) -> int | None:
        """The exit code if the process ended without us killing it (reported once). A leaving
        node's LEAVING_EXITS are expected; a joining node's exits are its starter's business."""
        if self._proc is None or self._expected_exit or self.joining:
            return None
        code = self._proc.poll()
        if code is None:
            return None
        self._expected_exit = True  # report once
        return None if self.leaving and code in LEAVING_EXITS else code

    def log_lines(self, needle: str) -> list[str]:
        """The lines of the node's log that contain `needle`."""
        try:
            text = self._log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if needle in line]

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self._log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Cluster:
    """The nodes of one run, and the admin requests the nemesis and the checks need."""

    def __init__(
        self, specs: Sequence[NodeSpec], node_cmd: Sequence[str], config: Path, logs: Path
    ) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self._node_cmd, self._config, self._logs = list(node_cmd), config, logs
        self.specs = {s.node_id: s for s in specs}
        self.nodes = {
            s.node_id: NodeProcess(s, node_cmd, config, logs / f"{s.node_id}.log") for s in specs
        }
        self.retired: set[str] = set()  # removed from the cluster (their processes stay known)
        self.ports_used = {p for s in specs for p in (s.raft_port, s.http_port)}
        self.admin_ip: str | None = None  # source address of admin requests

    @property
    def ids(self) -> list[str]:
        """The current members (and nodes joining), not the removed ones."""
        return sorted(n for n in self.nodes if n not in self.retired)

    def plan_node(self, node_id: str, rng: random.Random | None = None) -> NodeSpec:
        """A spec for a new node: a host of 127.0.0.1-9 no live node uses, fresh ports."""
        busy = {n.spec.host for i, n in self.nodes.items() if i not in self.retired or n.running}
        free = [h for h in (f"127.0.0.{i}" for i in range(1, 10)) if h not in busy]
        if not free:
            raise OSError("no free node address left in 127.0.0.1-9")
        host = free[0]
        return NodeSpec(
            node_id,
            host,
            free_port(host, self.ports_used, rng),
            free_port(host, self.ports_used, rng),
        )

    def add_node(self, spec: NodeSpec, args: Callable[[], list[str]]) -> NodeProcess:
        """Register a node started by `args` (e.g. `serve --join ...`); not started yet."""
        if spec.node_id in self.nodes:
            raise ValueError(f"{spec.node_id} exists already (ids are never reused)")
        node = NodeProcess(
            spec, self._node_cmd, self._config, self._logs / f"{spec.node_id}.log", args
        )
        self.specs[spec.node_id] = spec
        self.nodes[spec.node_id] = node
        return node

    def retire(self, node_id: str) -> None:
        """`node_id` was removed from the cluster: no longer a member, never restarted."""
        self.nodes[node_id].leaving = True
        self.retired.add(node_id)

    def start_all(self) -> None:
        for node in self.nodes.values():
            node.start()

    def stop_all(self) -> None:
        for node in self.nodes.values():
            node.terminate()
        for node in self.nodes.values():
            node.stop()

    def kill_all(self) -> None:
        """The last resort (atexit): nothing may outlive the run."""
        for node in self.nodes.values():
            node.kill()

    def reap_crashes(self, at: float) -> list[Crash]:
        crashes = []
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            code = node.crashed()
            if code is not None:
                crashes.append(Crash(node_id, at, code, node.log_tail()))
        return crashes

    async def admin(
        self,
        node_id: str,
        method: str,
        path: str,
        body: bytes = b"",
        timeout_s: float = 1.0,
        headers: dict[str, str] | None = None,
    ) -> httpclient.Reply:
        spec = self.specs[node_id]
        return await httpclient.request(
            method,
            spec.host,
            spec.http_port,
            path,
            body=body,
            headers=headers,
            source_ip=self.admin_ip,
            connect_timeout_s=min(timeout_s, 1.0),
            timeout_s=timeout_s,
        )

    async def local_status(self, node_id: str) -> dict[str, object] | None:
        """The node's `/cluster/local`, or None if it does not answer in time."""
        node = self.nodes[node_id]
        if not node.running or node.paused:
            return None
        try:
            reply = await self.admin(node_id, "GET", "/cluster/local", timeout_s=ADMIN_TIMEOUT_S)
        except (httpclient.NotSent, httpclient.MaybeSent):
            return None
        return reply.json() if reply.status == 200 else None

    async def statuses(self) -> dict[str, dict[str, object]]:
        ids = self.ids
        found = await asyncio.gather(*(self.local_status(n) for n in ids))
        return {n: s for n, s in zip(ids, found, strict=True) if s is not None}

    async def leader(self) -> str | None:
        """The node claiming leadership in the highest term any node reports (None if none)."""
        statuses = await self.statuses()
        claims = [
            (_int(s.get("term")), n) for n, s in statuses.items() if s.get("role") == "Leader"
        ]
        top_term = max((_int(s.get("term")) for s in statuses.values()), default=0)
        best = max(claims, default=None)
        return best[1] if best is not None and best[0] == top_term else None

    async def wait_ready(self, timeout_s: float) -> bool:
        """Every node runs and answers `/ready` 200 (a leader known, caught up) in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            members = [
                self.nodes[n]
                for n in self.ids
                if not (self.nodes[n].leaving or self.nodes[n].joining)
            ]
            if all(n.running for n in members) and await self.all_ready():
                return True
            await asyncio.sleep(0.1)
        return False

    async def all_ready(self) -> bool:
        """Every member that runs, is not paused and is neither joining nor leaving answers
        `/ready` 200 (and at least one does)."""

        async def ready(node_id: str) -> bool:
            try:
                reply = await self.admin(node_id, "GET", "/ready", timeout_s=ADMIN_TIMEOUT_S)
            except (httpclient.NotSent, httpclient.MaybeSent):
                return False
            return reply.status == 200

        ids = [
            n
            for n in self.ids
            if self.nodes[n].running
            and not (self.nodes[n].paused or self.nodes[n].leaving or self.nodes[n].joining)
        ]
        return bool(ids) and all(await asyncio.gather(*(ready(n) for n in ids)))


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
