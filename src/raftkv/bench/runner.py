"""Running a benchmark: find the leader, fill the key space, watch for leader changes, load.

Rules:
- Writes go to the current leader, found from the cluster's own reports (a follower would
  forward them, adding a hop the benchmark should not measure); reads go there too, so that
  raftkv and etcd are loaded the same way.
- `LeaderWatch` polls in a background thread (never inside the load generator's loop) and
  records every change of leader or term with its time, for the report and the plot's marks.
- `run_load` picks wrk when it is installed (`generator="auto"`), else the Python generator.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import aiohttp

from raftkv.bench.clusters import b64, http_json
from raftkv.bench.pyload import run_python
from raftkv.bench.spec import LoadSpec, ProgressFn, System, keyspace_keys
from raftkv.bench.stats import LoadResult
from raftkv.bench.wrk import LoadError, run_wrk, wrk_binary
from raftkv.ops.httpc import base_url

Generator = Literal["auto", "wrk", "python"]
WATCH_EVERY_S: Final = 0.1
FILL_RETRIES: Final = 100
LeaderProbe = Callable[[], tuple[str | None, int]]


def raftkv_members(address: str) -> dict[str, str]:
    """Node id -> HTTP host:port, from `address`'s /cluster/status."""
    status, body = http_json("GET", base_url(address) + "/cluster/status", timeout=2.0)
    if status != 200 or not isinstance(body, dict):
        why = "no answer" if status == 0 else f"HTTP {status}"
        raise LoadError(f"cannot read /cluster/status from {address} ({why})")
    nodes = body.get("nodes", {})
    return {str(n): str(e.get("http_address") or address) for n, e in sorted(nodes.items())}


def raftkv_probe(members: Mapping[str, str]) -> LeaderProbe:
    """(leader, term): the self-reported leader of the highest term among the members."""

    def probe() -> tuple[str | None, int]:
        best: tuple[int, str | None] = (0, None)
        for addr in members.values():
            status, body = http_json("GET", base_url(addr) + "/cluster/local", timeout=0.3)
            if status != 200 or not isinstance(body, dict):
                continue
            term = int(body.get("term", 0))
            if body.get("role") == "Leader" and term >= best[0]:
                best = (term, str(body.get("node_id")))
            elif term > best[0]:
                best = (term, None)
        return best[1], best[0]

    return probe


def wait_for_leader(probe: LeaderProbe, timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        leader, _ = probe()
        if leader is not None:
            return leader
        time.sleep(0.05)
    raise LoadError(f"no leader within {timeout_s}s")


@dataclass(frozen=True, slots=True)
class LeaderEvent:
    t: float  # seconds since the watch started
    leader: str | None
    term: int


class LeaderWatch:
    """Records (time, leader, term) whenever either changes, polling in a thread."""

    def __init__(self, probe: LeaderProbe, every_s: float = WATCH_EVERY_S) -> None:
        self._probe = probe
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-watch", daemon=True)
        self.events: list[LeaderEvent] = []
        self.start_t = 0.0

    def __enter__(self) -> LeaderWatch:
        self.start_t = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last: tuple[str | None, int] | None = None
        while not self._stop.is_set():
            try:
                now = self._probe()
            except Exception:  # a probe failure is a gap in the record, not a crash
                now = (None, last[1] if last else 0)
            if now[0] is not None and now != last:
                self.events.append(LeaderEvent(time.monotonic() - self.start_t, *now))
                last = now
            self._stop.wait(self._every)


def leader_changes(events: Sequence[LeaderEvent]) -> int:
    """Changes after the first observation (a new term with a leader counts as a change)."""
    return max(0, len(events) - 1)


async def fill_keyspace(
    url: str, system: System, prefix: str, keys: int, value_size: int, concurrency: int = 32
) -> None:
    """PUT every key of the read key space once (to the leader at `url`)."""
    names = keyspace_keys(prefix, keys)
    value = "x" * value_size
    base = url.rstrip("/")
    queue = list(reversed(names))

    async def put(session: aiohttp.ClientSession, key: str) -> tuple[int, str]:
        if system == "etcd":
            body = {"key": b64(key), "value": b64(value)}
            req = session.post(f"{base}/v3/kv/put", json=body)
        else:
            req = session.put(f"{base}/kv/{key}", data=value.encode())
        async with req as resp:
            return resp.status, (await resp.read()).decode(errors="replace")[:200]

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            key = queue.pop()
            # Set-up, not measurement: an election under a loaded machine may refuse a PUT
            # (503) for a moment, and re-putting the same value is harmless, so retry briefly.
            for _ in range(FILL_RETRIES):
                try:
                    status, words = await put(session, key)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, words = 0, repr(exc)
                if status == 200:
                    break
                await asyncio.sleep(0.05)
            else:
                raise LoadError(f"filling key {key}: HTTP {status} {words}")

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


def run_load(
    spec: LoadSpec, generator: Generator = "auto", on_progress: ProgressFn | None = None
) -> LoadResult:
    use_wrk = generator == "wrk" or (generator == "auto" and wrk_binary() is not None)
    if use_wrk:
        return run_wrk(spec, on_progress)
    return asyncio.run(run_python(spec, on_progress))
