"""HTTP read workers (`server.read_workers`): GET /kv/{key} served by other processes.

Rules:
- Only with the fast engine, plain HTTP (no `tls.http`: a TLS session cannot move between
  processes) and `auth.enabled` off (the workers check no tokens), on the LMDB state backend.
  Otherwise the node serves everything itself, as with `read_workers: 0`.
- A connection whose FIRST request is a fast-path stale GET is handed to a worker (round robin): its
  descriptor and the bytes read so far go over the worker's channel (`read_channel.py`), and the
  node closes its own descriptor. A connection that starts with anything else stays here, so
  write loads never pass through a worker. A worker hands a connection back (with the bytes of
  the request it cannot answer and everything after) for any other request, and when the node
  refuses a read fence; the node then serves that connection itself until it closes.
- Linearizable reads: a worker sends one `Fence` per loop turn for the reads that arrived
  meanwhile; the node runs `read_fence` (ReadIndex started after the message arrived, so after
  each request arrived) and answers with its applied index once the state is applied that far.
  The worker then reads its own LMDB view and checks the applied index stored in that same
  transaction covers it. A fence that fails (halted, stopping, no leader, timeout) is refused:
  the request comes back here and is answered exactly as without workers.
- Stale reads are served from the worker's view while the node says `Serving(on=True)`; the
  node says off the moment it stops serving reads (halted, failed after a storage failure,
  stopped: `when_reads_refused`), before any reply of that failure is sent, and from then on
  keeps new GET connections itself (it answers 503). A worker that is off hands every stale
  read back: the node answers it with its own error. A graceful drain keeps them on. The
  message reaches a worker only when its loop reads the channel: the shared gate
  (`read_gate.py`, shut before `Serving(False)` is sent) is what a worker checks just before
  writing each reply, so no reply made from its view leaves it once the node refuses reads.
- Counting: requests served by a worker go into this node's /metrics (sent in batches); its
  connections count toward `server.max_connections`.
- Lifecycle: workers start with the HTTP listener and stop with it (`Stop`: replies in
  progress finish, then exit; killed after STOP_TIMEOUT_S). A worker exits when its channel
  closes, so one never outlives the node (even after kill -9). A worker that dies is restarted
  after RESTART_DELAY_S; after MAX_RESTARTS deaths within RESTART_WINDOW_S the node stops
  using workers and serves everything itself (logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeGuard

import structlog

from raftkv.server import read_channel as ch
from raftkv.server.config import Settings
from raftkv.server.fast_http import FastProtocol
from raftkv.server.fast_routes import FastServer
from raftkv.server.read_gate import ReadGate
from raftkv.storage.state_lmdb import DEFAULT_MAP_SIZE

log = structlog.get_logger(__name__)

STOP_TIMEOUT_S: Final = 5.0
RESTART_DELAY_S: Final = 0.5
MAX_RESTARTS: Final = 5
RESTART_WINDOW_S: Final = 60.0
_GET: Final = "GET"


class FencedNode(Protocol):
    """What the workers need of the node (runtime/node.py's RaftKVNode has it)."""

    async def read_fence(
        self, *, linearizable: bool, min_revision: int = 0, lease: bool = False
    ) -> int: ...

    def state_dir(self) -> os.PathLike[str] | None: ...

    def serves_reads(self) -> bool: ...

    def when_reads_refused(self, callback: Callable[[], None]) -> None: ...


@dataclass(eq=False)
class _Worker:
    slot: int
    proc: asyncio.subprocess.Process
    channel: ch.Channel | None = None
    given: int = 0  # connections handed to it
    ended: int = 0  # of those, closed or handed back (its own count, from Stats)
    serving: bool | None = None  # the last Serving sent
    ready: bool = False  # it said Ready: connections may go to it
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def worker_count(settings: Settings) -> int:
    """How many read workers this node runs (0: none; see the rules)."""
    n = settings.config.server.read_workers
    if n == "auto":
        n = 1 if (os.cpu_count() or 1) > 1 else 0
    if settings.http_engine != "fast" or settings.tls_http is not None or settings.auth_enabled:
        return 0
    if settings.log_level == "debug":  # aiohttp serves everything then (access log)
        return 0
    return n


class ReadWorkers:
    """The node's read workers (see the module rules)."""

    def __init__(
        self, node: FencedNode, settings: Settings, fast: FastServer, count: int, lmdb_dir: str
    ) -> None:
        self._node = node
        self._settings = settings
        self._fast = fast
        self._count = count
        self._lmdb_dir = lmdb_dir
        self._workers: list[_Worker | None] = [None] * count
        # The node keeps one share of the GET connections itself (-1): it has a core too.
        self._rr = itertools.cycle(range(-1, count))
        self._deaths: list[float] = []
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self.given_up = False  # too many deaths: the node serves everything itself
        self._gate = ReadGate.create()  # shut when the node refuses reads (read_gate.py)
        self.fences = 0  # Fence messages answered (a batch each)
        self.fenced_reads = 0  # reads in them

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        # First: a failure while a worker is being spawned reaches those already up; each
        # worker spawned later is sent the state of that moment (`_spawn`).
        self._node.when_reads_refused(self._reads_refused)
        for slot in range(self._count):
            await self._spawn(slot)

    async def _spawn(self, slot: int) -> None:
        ours, theirs = ch.pair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "raftkv.server.read_worker",
                str(theirs.fileno()),
                str(self._gate.fd),
                pass_fds=(theirs.fileno(), self._gate.fd),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker = _Worker(slot, proc)
        self._workers[slot] = worker
        worker.channel = ch.Channel(
            ours,
            lambda msg, fd: self._on_message(worker, msg, fd),
            lambda: self._on_close(worker),
        )
        s = self._settings
        limits = s.http_limits
        worker.channel.send(
            ch.Init(
                lmdb_path=self._lmdb_dir,
                map_size=DEFAULT_MAP_SIZE,
                request_timeout_ms=s.request_timeout_ms,
                keepalive_timeout_ms=limits.keepalive_timeout_ms,
                body_timeout_ms=limits.body_timeout_ms,
                max_value_bytes=s.max_value_bytes,
                max_line_bytes=self._fast.max_line_bytes,
                max_field_bytes=self._fast.max_field_bytes,
                metrics=s.metrics,
                log_level=s.log_level,
                log_format=s.log_format,
                node_id=s.node_id,
            )
        )
        self._push_serving(worker)
        log.info("read worker started", slot=slot, pid=proc.pid)

    async def stop(self) -> None:
        """Stop every worker (replies in progress finish); kill those that do not exit."""
        self._stopping = True
        log.info("read workers stopping", fences=self.fences, fenced_reads=self.fenced_reads)
        workers = [w for w in self._workers if w is not None]
        for w in workers:
            if w.channel is not None:
                w.channel.send(ch.Stop())
        for w in workers:
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await w.proc.wait()
            except TimeoutError:
                log.warning("read worker did not stop in time: killed", pid=w.proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                await w.proc.wait()
            if w.channel is not None:
                w.channel.close()
        for task in list(self._tasks):
            task.cancel()
        self._workers = [None] * self._count
        self._gate.close()  # every worker has exited (its mapping with it)

    def _on_close(self, worker: _Worker) -> None:
        worker.channel = None
        for task in worker.tasks:
            task.cancel()
        if self._stopping or self._workers[worker.slot] is not worker:
            return
        self._workers[worker.slot] = None
        self._spawn_task(self._reap_and_restart(worker))

    async def _reap_and_restart(self, worker: _Worker) -> None:
        code = await worker.proc.wait()
        now = time.monotonic()
        self._deaths = [t for t in self._deaths if now - t < RESTART_WINDOW_S] + [now]
        if self._stopping:
            return
        if len(self._deaths) > MAX_RESTARTS:
            if not self.given_up:
                log.error(
                    "read workers keep dying: this node serves all reads itself",
                    deaths=len(self._deaths),
                    window_s=RESTART_WINDOW_S,
                    exit_code=code,
                )
            self.given_up = True
            return
        log.warning("read worker died: restarting", slot=worker.slot, exit_code=code)
        await asyncio.sleep(RESTART_DELAY_S)
        if not self._stopping and self._workers[worker.slot] is None:
            await self._spawn(worker.slot)

    def _reads_refused(self) -> None:
        # Synchronous, on the node's failure path: before the replies it fails. The gate
        # first: a worker checks it before every reply, even one made before it reads this.
        self._gate.shut()
        for w in self._workers:
            if w is not None:
                self._push_serving(w)

    def _push_serving(self, worker: _Worker) -> None:
        on = self._node.serves_reads()
        if not on:
            self._gate.shut()  # the node refused reads before the workers started
        if worker.serving is not on and worker.channel is not None:
            worker.serving = on
            worker.channel.send(ch.Serving(on))

    def _spawn_task(self, coro: Coroutine[object, object, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connections --------------------------------------------------------------------------

    def choose(self) -> int | None:
        """The worker a new GET connection goes to, or None: the node keeps it (one share)."""
        if self._stopping or not self._node.serves_reads():
            return None  # the node answers it (503) rather than a worker handing it back
        slot = next(self._rr)
        w = self._workers[slot] if slot >= 0 else None
        return slot if w is not None and w.ready and w.channel is not None else None

    def connections(self) -> int:
        """Connections the workers hold (for `server.max_connections`)."""
        return sum(w.given - w.ended for w in self._workers if w is not None)

    def offer(self, slot: int, transport: asyncio.Transport, data: bytes) -> bool:
        """Give a connection to worker `slot` (False: not sent; the caller keeps it)."""
        sock = transport.get_extra_info("socket")
        w = self._workers[slot]
        if sock is None or w is None or w.channel is None:
            return False
        if not w.channel.send_conn(data, sock.fileno()):
            return False
        w.given += 1
        return True

    def _adopt(self, data: bytes, fd: int) -> None:
        """A connection a worker handed back: served here from now on."""
        sock = socket.socket(fileno=fd)
        fast = self._fast

        def protocol() -> FastProtocol:
            return FastProtocol(fast, data, returned=True)

        async def adopt() -> None:
            try:
                await self._loop.connect_accepted_socket(protocol, sock)
            except OSError:
                sock.close()

        self._spawn_task(adopt())

    # -- messages -----------------------------------------------------------------------------

    def _on_message(self, worker: _Worker, msg: ch.Message, fd: int) -> None:
        if isinstance(msg, ch.Fence):
            self._fence(worker, msg.reads)
        elif isinstance(msg, ch.Stats):
            worker.ended = msg.closed
            for status, seconds in msg.served:
                self._fast.routes.observe(_GET, status, seconds)
        elif isinstance(msg, ch.Back):
            self._adopt(msg.data, fd)
        elif isinstance(msg, ch.Ready):
            worker.ready = True
            log.info("read worker ready", slot=worker.slot, pid=worker.proc.pid)
        else:  # a worker sends nothing else: a broken worker
            log.error("read worker sent an unexpected message", kind=type(msg).__name__)
            if fd >= 0:
                os.close(fd)
            if worker.channel is not None:
                worker.channel.close()

    def _fence(self, worker: _Worker, reads: list[tuple[int, bool, int, bool]]) -> None:
        self.fences += 1
        self.fenced_reads += len(reads)
        groups: dict[tuple[bool, int, bool], list[int]] = {}
        for rid, linearizable, min_revision, lease in reads:
            groups.setdefault((linearizable, max(0, min_revision), lease), []).append(rid)
        for (linearizable, min_revision, lease), rids in groups.items():
            task = self._loop.create_task(
                self._answer(worker, rids, linearizable, min_revision, lease)
            )
            worker.tasks.add(task)
            task.add_done_callback(worker.tasks.discard)

    async def _answer(
        self, worker: _Worker, rids: list[int], linearizable: bool, min_revision: int, lease: bool
    ) -> None:
        # One fence for every read of the group: each arrived before the message that asked.
        status, applied = ch.FENCE_REFUSED, 0
        try:
            applied = await self._node.read_fence(
                linearizable=linearizable, min_revision=min_revision, lease=lease
            )
            status = ch.FENCE_OK
        except Exception:  # the node answers such a request itself (its own error reply)
            pass
        if worker.channel is not None:
            worker.channel.send(ch.Fenced([(rid, status, applied) for rid in rids]))


def make_read_workers(
    node: object, settings: Settings, fast: FastServer
) -> Callable[[], ReadWorkers] | None:
    """A maker of the node's read workers, or None when it runs none (see the rules)."""
    count = worker_count(settings)
    if count <= 0 or not _is_fenced(node):
        return None
    lmdb_dir = node.state_dir()
    if lmdb_dir is None:
        return None
    return lambda: ReadWorkers(node, settings, fast, count, os.fspath(lmdb_dir))


def _is_fenced(node: object) -> TypeGuard[FencedNode]:
    names = ("read_fence", "state_dir", "serves_reads", "when_reads_refused")
    return all(hasattr(node, name) for name in names)
