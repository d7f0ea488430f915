"""Throw-away local clusters for benchmarks and tests: 3 raftkv nodes or 3 etcd members.

Rules:
- Everything listens on 127.0.0.1 on ports picked free at start (bound to port 0, then
  released: a tiny race with other programs, acceptable for a benchmark or a test).
- The data lives under the given directory (on a real disk, so fsync costs what it costs; never
  tmpfs for a benchmark). Each process logs to `<dir>/logs/<name>.log`.
- Both kinds share one interface (`start`, `kill`, `restart`, `leader`, `pids`, `stop`) so the
  comparison drives them with the same code. raftkv runs with the seed's timing (100 ms
  election, 25 ms heartbeat); etcd with `--election-timeout=100 --heartbeat-interval=20`
  (etcd refuses a heartbeat above a fifth of the election timeout), fsync on (etcd's default;
  `--unsafe-no-fsync` is never set).
- A member that exits while we wait for a leader fails the wait at once, quoting its log.
- Waiting is on conditions with deadlines (a leader known to every live member), never sleeps
  of a fixed length. `stop()` always reaps every child, even after a failure.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

POLL_S: Final = 0.02
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ClusterError(Exception):
    """A cluster did not come up or lost its leader for good."""


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_json(
    method: str, url: str, body: bytes | None = None, timeout: float = 1.0
) -> tuple[int, Any]:
    """(status, decoded JSON or None); status 0 when nothing answered."""
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _opener.open(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    except (OSError, TimeoutError):
        return 0, None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` from /proc/<pid>/stat (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # After the ")" the 1st field is the state (field 3); utime, stime are fields 14, 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def family(pids: Iterable[int]) -> list[int]:
    """`pids` and their children: a node's helper processes (snapshot builder, read workers)
    work for it, so their CPU is the node's CPU."""
    out = list(pids)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid in out:
                out.append(int(entry.name))
    return out


class _Procs:
    """Child processes by member name, logging to files."""

    def __init__(self, base: Path) -> None:
        self.base = base
        (base / "logs").mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: set[str] = set()  # members we stopped on purpose (not a failure)

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        self.killed.discard(name)
        log = open(self.base / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - owned by Popen
        try:
            self.procs[name] = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # a Ctrl-C of the harness does not hit the members
            )
        finally:
            log.close()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            self.killed.add(name)
            proc.send_signal(sig)
            proc.wait(timeout=10)

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.procs.items() if p.poll() is None}

    def check_running(self) -> None:
        """Raise if a member we started has exited on its own, quoting its last log lines."""
        for name, proc in self.procs.items():
            if proc.poll() is not None and name not in self.killed:
                tail = (self.base / "logs" / f"{name}.log").read_text(errors="replace")
                raise ClusterError(f"{name} exited with {proc.returncode}:\n{tail[-1500:]}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class _ProcessCluster:
    """What both clusters do with their member processes (spawned from `_argv(name)`)."""

    _procs: _Procs

    def _argv(self, name: str) -> list[str]:
        raise NotImplementedError

    def restart(self, name: str) -> None:
        self._procs.spawn(name, self._argv(name))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        self._procs.kill(name, sig)

    def alive(self, name: str) -> bool:
        return self._procs.alive(name)

    def pids(self) -> dict[str, int]:
        return self._procs.pids()

    def stop(self) -> None:
        self._procs.stop()


class LocalCluster(_ProcessCluster):
    """Three (or `size`) raftkv nodes on 127.0.0.1 with the seed's timing."""

    kind = "raftkv"

    def __init__(
        self,
        base: Path,
        size: int = 3,
        *,
        log_level: str = "warning",
        server: Mapping[str, bool | int | str] | None = None,
    ) -> None:
        self.base = Path(base)
        self.server = dict(server or {})  # extra `server:` keys of the config file
        self.names = [f"node-{i}" for i in range(1, size + 1)]
        ports = free_ports(2 * size)
        self.http = {n: f"127.0.0.1:{ports[i]}" for i, n in enumerate(self.names)}
        self.raft = {n: f"127.0.0.1:{ports[size + i]}" for i, n in enumerate(self.names)}
        self.config = self.base / "cluster.yaml"
        self.log_level = log_level
        self._procs = _Procs(self.base)

    def _write_config(self) -> None:
        lines = [
            "cluster:",
            '  name: "bench"',
            f'  bootstrap_id: "{self.names[0]}"',
            f'  data_dir: "{self.base / "data"}"',
            "  nodes:",
            *(f'    {n}: "{self.raft[n]}"' for n in self.names),
            "  http:",
            *(f'    {n}: "{self.http[n]}"' for n in self.names),
            "raft:",
            "  election_timeout_ms: 100",
            "  heartbeat_timeout_ms: 25",
            *(["server:"] if self.server else []),
            *(f"  {k}: {json.dumps(v)}" for k, v in self.server.items()),
            "logging:",
            f'  level: "{self.log_level}"',
        ]
        self.config.write_text("\n".join(lines) + "\n")

    def _argv(self, name: str) -> list[str]:
        exe = Path(sys.executable).with_name("raftkv")
        head = [str(exe)] if exe.exists() else [sys.executable, "-m", "raftkv.cli.main"]
        return [*head, "serve", "--config", str(self.config), "--node-id", name]

    def start(self, timeout_s: float = 30.0) -> None:
        self._write_config()
        for name in self.names:
            self._procs.spawn(name, self._argv(name))
        self.wait_leader(timeout_s)

    def client_url(self, name: str) -> str:
        return f"http://{self.http[name]}"

    def leader(self) -> str | None:
        """The member every live member names as leader, if they agree."""
        seen: set[str | None] = set()
        for name in self.names:
            if not self.alive(name):
                continue
            status, body = http_json("GET", f"{self.client_url(name)}/cluster/local", timeout=0.5)
            seen.add(body.get("leader_id") if status == 200 and isinstance(body, dict) else None)
        return seen.pop() if len(seen) == 1 else None

    def describe(self) -> dict[str, object]:
        """Each member's own /cluster/local (or why not), for problem reports."""
        out: dict[str, object] = {}
        for name in self.names:
            if not self.alive(name):
                out[name] = "not running"
                continue
            status, body = http_json("GET", f"{self.client_url(name)}/cluster/local", timeout=0.5)
            out[name] = body if status == 200 else f"no answer (HTTP {status})"
        return out

    def leader_term(self) -> tuple[str | None, int]:
        """(leader, term) as the first live member answering sees it."""
        for name in self.names:
            if not self.alive(name):
                continue
            status, body = http_json("GET", f"{self.client_url(name)}/cluster/local", timeout=0.5)
            if status == 200 and isinstance(body, dict):
                return body.get("leader_id"), int(body.get("term", 0))
        return None, 0

    def wait_leader(self, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None:
                return leader
            self._procs.check_running()
            time.sleep(POLL_S)
        raise ClusterError(f"raftkv: no agreed leader within {timeout_s}s (logs in {self.base})")


class EtcdCluster(_ProcessCluster):
    """Three etcd 3.4 members on 127.0.0.1, election 100 ms / heartbeat 20 ms, fsync on."""

    kind = "etcd"

    def __init__(self, base: Path, size: int = 3, *, binary: str = "etcd") -> None:
        self.base = Path(base)
        self.names = [f"m{i}" for i in range(1, size + 1)]
        ports = free_ports(2 * size)
        self.client = {n: f"127.0.0.1:{ports[i]}" for i, n in enumerate(self.names)}
        self.peer = {n: f"127.0.0.1:{ports[size + i]}" for i, n in enumerate(self.names)}
        found = shutil.which(binary)
        if found is None:
            raise ClusterError("etcd not found: apt-get install -y etcd-server etcd-client")
        self.binary = found
        self._procs = _Procs(self.base)
        self._ids: dict[str, str] = {}  # member name -> member id (decimal string)

    def _argv(self, name: str) -> list[str]:
        initial = ",".join(f"{n}=http://{self.peer[n]}" for n in self.names)
        return [
            self.binary,
            "--name", name,
            "--data-dir", str(self.base / "data" / name),
            "--listen-client-urls", f"http://{self.client[name]}",
            "--advertise-client-urls", f"http://{self.client[name]}",
            "--listen-peer-urls", f"http://{self.peer[name]}",
            "--initial-advertise-peer-urls", f"http://{self.peer[name]}",
            "--initial-cluster", initial,
            "--initial-cluster-token", "bench",
            "--initial-cluster-state", "new",
            "--election-timeout", "100",
            # etcd refuses an election timeout below 5 heartbeats, so 25 ms is not allowed
            # with 100 ms: keep the election timeout (what failover depends on) and beat at 20.
            "--heartbeat-interval", "20",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip

    def start(self, timeout_s: float = 30.0) -> None:
        for name in self.names:
            self._procs.spawn(name, self._argv(name))
        self.wait_leader(timeout_s)

    def client_url(self, name: str) -> str:
        return f"http://{self.client[name]}"

    def _status(self, name: str) -> dict[str, Any] | None:
        url = f"{self.client_url(name)}/v3/maintenance/status"
        status, body = http_json("POST", url, b"{}", timeout=0.5)
        return body if status == 200 and isinstance(body, dict) else None

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for name in self.names:
            body = self._status(name) if self.alive(name) else None
            out[name] = body if body is not None else "not running or no answer"
        return out

    def leader_term(self) -> tuple[str | None, int]:
        for name in self.names:
            if not self.alive(name):
                continue
            body = self._status(name)
            if body is None:
                continue
            self._ids[name] = str(body["header"]["member_id"])
            term = int(body.get("raftTerm", body.get("raft_term", 0)))
            leader_id = str(body.get("leader", "0"))
            by_id = {v: k for k, v in self._ids.items()}
            return by_id.get(leader_id), term
        return None, 0

    def leader(self) -> str | None:
        seen: set[str | None] = set()
        for name in self.names:
            if not self.alive(name):
                continue
            body = self._status(name)
            if body is None:
                seen.add(None)
                continue
            self._ids[name] = str(body["header"]["member_id"])
            seen.add(str(body.get("leader", "0")))
        if len(seen) != 1:
            return None
        leader_id = seen.pop()
        with contextlib.suppress(StopIteration):
            return next(n for n, i in self._ids.items() if i == leader_id)
        return None

    def wait_leader(self, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None:
                return leader
            self._procs.check_running()
            time.sleep(POLL_S)
        raise ClusterError(f"etcd: no agreed leader within {timeout_s}s (logs in {self.base})")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
