"""One HTTP read worker (`python -m raftkv.server.read_worker FD GATE_FD`; read_workers.py).

Rules:
- Started by the node with one end of a channel (`read_channel.py`) as descriptor FD and the
  node's read gate (`read_gate.py`) as GATE_FD; the first message is `Init`. It opens the
  node's LMDB state READ-ONLY (LMDB supports readers in other processes) and serves
  `GET /kv/{key}` on the connections the node hands it with the fast engine and the node's
  own handler (`KvRoutes.get`, wrapped by `FastRoutes`: same replies, same errors, byte
  for byte). Everything else goes back to the node (`HandBack`).
- A read that needs a fence (linearizable, lease, `min_revision`) waits for the node's
  `Fenced` answer (one `Fence` message per loop turn for every read waiting), then runs on one
  read transaction whose stored applied index must cover the fence — else, or when the node
  refused, the connection goes back to the node. A stale read runs at once while the node
  says it serves (`Serving`); once it says off (halted, failed, stopped), the connection goes
  back to the node, which answers with its error. Every reply is written only while the gate
  is open (checked just before the write, `FastServer.replies_refused`): the node shuts it
  before any reply of its failure, and this loop may read `Serving(False)` only later.
- It exits when told (`Stop`: idle connections close, replies in progress finish) or when
  the channel closes (the node is gone): it never outlives the node. SIGTERM stops it the
  same way; SIGINT is ignored (the node handles Ctrl-C and stops its workers).
- Served requests are reported to the node in `Stats` (every STATS_S while any were served).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import socket
import struct
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Final, TypeVar, cast

import lmdb
import structlog
from aiohttp import web

from raftkv.kv.mvcc import MVCCStore
from raftkv.runtime.api import KVNode, NotLeaderError
from raftkv.runtime.waiters import await_within
from raftkv.server import read_channel as ch
from raftkv.server.config import LogFormat, Settings
from raftkv.server.fast_http import FastProtocol
from raftkv.server.fast_request import HandBack, Pending
from raftkv.server.fast_routes import FastRoutes, FastServer
from raftkv.server.http import call_node
from raftkv.server.inputs import max_body_bytes
from raftkv.server.kv_routes import KvRoutes
from raftkv.server.limits import BodyGate, HttpLimits
from raftkv.server.logging import configure_logging
from raftkv.server.read_gate import ReadGate
from raftkv.storage.mvcc_lmdb import LmdbStore, open_dbs

T = TypeVar("T")
log = structlog.get_logger(__name__)

STATS_S: Final = 0.05
SHUTDOWN_TIMEOUT_S: Final = 5.0
_APPLIED_KEY: Final = b"applied"  # state_lmdb.py's meta record: (index, term) u64 LE
_APPLIED: Final = struct.Struct("<QQ")


class WorkerNode:
    """The part of a node `KvRoutes.get` calls (`read`), over the worker's LMDB view."""

    def __init__(self, env: lmdb.Environment, channel: ch.Channel, timeout_s: float) -> None:
        self._env = env
        self._timeout_s = timeout_s  # the node's request timeout: a fence waits no longer
        self._dbs = open_dbs(env, env.open_db(b"meta", create=False))
        self._channel = channel
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[int]] = {}
        self._batch: list[tuple[int, bool, int, bool]] = []
        self._asked: set[int] = set()  # ids of the Fence in flight (one at a time)
        self._loop = asyncio.get_running_loop()
        self.serving = False  # stale reads allowed (the node's Serving)

    async def read(
        self,
        fn: Callable[[MVCCStore], T],
        *,
        linearizable: bool,
        min_revision: int = 0,
        lease: bool = False,
    ) -> T:
        fence = 0
        if linearizable or min_revision > 0 or lease:
            fence = await self._fence(linearizable, min_revision, lease)
        elif not self.serving:
            raise HandBack
        with self._env.begin() as txn:
            applied = txn.get(_APPLIED_KEY, db=self._dbs.meta)
            index = _APPLIED.unpack(applied)[0] if applied is not None else 0
            if index < fence:  # cannot happen (the node applied it before answering)
                log.error("read worker: state behind the fence", applied=index, fence=fence)
                raise HandBack
            return fn(LmdbStore(txn, self._dbs))

    async def _fence(self, linearizable: bool, min_revision: int, lease: bool) -> int:
        rid = next(self._ids)
        fut: asyncio.Future[int] = self._loop.create_future()
        self._waiting[rid] = fut
        if not self._batch and not self._asked:
            self._loop.call_soon(self._send_batch)
        self._batch.append((rid, linearizable, min_revision, lease))
        try:
            return await await_within(fut, self._timeout_s)  # 504, as the node's own read
        finally:
            self._waiting.pop(rid, None)

    def _send_batch(self) -> None:
        # One Fence in flight at a time (as etcd's read loop): the reads arriving meanwhile go
        # in the next one, asked once this one is answered, so the node runs fewer, fuller
        # rounds. Each read is still fenced by a round asked after it arrived.
        batch, self._batch = self._batch, []
        if batch:
            self._asked = {rid for rid, *_ in batch}
            self._channel.send(ch.Fence(batch))

    def fenced(self, reads: list[tuple[int, int, int]]) -> None:
        for rid, status, applied in reads:
            self._asked.discard(rid)
            fut = self._waiting.get(rid)
            if fut is None or fut.done():
                continue  # its request timed out or its client left
            if status == ch.FENCE_OK:
                fut.set_result(applied)
            else:
                fut.set_exception(HandBack())
        if not self._asked:
            self._send_batch()

    def abort(self) -> None:
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(HandBack())


class _Calls:
    """`KvRoutes`'s node calls: the node's timeout and error mapping (`http.call_node`)."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s

    async def call(self, operation: Awaitable[T], *, write: bool, timed: bool = True) -> T:
        # WorkerNode.read bounds its fence itself, as the node's read does (timed=False).
        return await call_node(operation, self._timeout_s if timed else None, write=write)

    async def forward(
        self, request: web.Request, body: bytes, exc: NotLeaderError
    ) -> web.StreamResponse:
        raise HandBack  # a worker serves reads only: never reached

    def leader_elsewhere(self) -> NotLeaderError | None:
        return None  # a worker proposes nothing (writes are handed back to the node)

    def forward_soon(
        self, request: web.Request, body: bytes, exc: NotLeaderError
    ) -> Pending | None:
        return None  # never reached, as `forward`


class _Served:
    """Requests served, batched for the node's /metrics (`Stats`)."""

    def __init__(self) -> None:
        self.items: list[tuple[int, float]] = []

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.items.append((status, seconds))


class Worker:
    def __init__(self, sock: socket.socket, gate: ReadGate) -> None:
        self._sock = sock
        self._gate = gate
        self._stopped = asyncio.Event()
        self._fast: FastServer | None = None
        self._node: WorkerNode | None = None
        self._served = _Served()
        self._init: ch.Init | None = None
        self._serving = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self.channel = ch.Channel(sock, self._on_message, self._stopped.set)

    def _on_message(self, msg: ch.Message, fd: int) -> None:
        if isinstance(msg, ch.Conn):
            self._adopt(msg.data, fd)
        elif isinstance(msg, ch.Fenced):
            if self._node is not None:
                self._node.fenced(msg.reads)
        elif isinstance(msg, ch.Serving):
            self._serving = msg.on
            if self._node is not None:
                self._node.serving = msg.on
        elif isinstance(msg, ch.Init) and self._init is None:
            self._init = msg
            self._setup(msg)
        elif isinstance(msg, ch.Stop):
            self._stopped.set()
        else:
            log.error("read worker: unexpected message", kind=type(msg).__name__)
            self.channel.close()

    def _setup(self, init: ch.Init) -> None:
        configure_logging(init.log_level, cast(LogFormat, init.log_format))
        structlog.contextvars.bind_contextvars(node=init.node_id, role="read-worker")
        env = lmdb.open(
            init.lmdb_path,
            readonly=True,
            max_dbs=5,
            subdir=True,
            map_size=init.map_size,
        )
        self._node = WorkerNode(env, self.channel, init.request_timeout_ms / 1000)
        self._node.serving = self._serving
        calls = _Calls(init.request_timeout_ms / 1000)
        # KvRoutes.get reads no settings (only writes check value sizes): none are passed.
        kv = KvRoutes(cast(KVNode, self._node), cast(Settings, None), calls)
        limits = HttpLimits(
            body_timeout_ms=init.body_timeout_ms, keepalive_timeout_ms=init.keepalive_timeout_ms
        )
        routes = FastRoutes(
            {"GET": kv.get},
            BodyGate(limits, max_body_bytes(init.max_value_bytes)),
            self._served if init.metrics else None,
            None,
        )
        self._fast = FastServer(
            routes,
            None,
            keepalive_s=init.keepalive_timeout_ms / 1000,
            body_timeout_s=init.body_timeout_ms / 1000,
            max_line_bytes=init.max_line_bytes,
            max_field_bytes=init.max_field_bytes,
        )
        self._fast.hand_back = self._hand_back
        self._fast.replies_refused = self._gate.is_shut
        self._spawn(self._report())
        self.channel.send(ch.Ready())

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _adopt(self, data: bytes, fd: int) -> None:
        fast = self._fast
        sock = socket.socket(fileno=fd)
        if fast is None or self._stopped.is_set():
            # Not ready or stopping: straight back to the node, which serves it itself.
            self.channel.send(ch.Back(data), fd)
            sock.close()
            return

        async def adopt() -> None:
            try:
                await self._loop.connect_accepted_socket(
                    lambda: FastProtocol(fast, data, returned=True), sock
                )
            except OSError:
                sock.close()

        self._spawn(adopt())

    def _hand_back(self, transport: asyncio.Transport, data: bytes) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.channel.send(ch.Back(data), sock.fileno())
        transport.close()  # the node holds its own descriptor now

    async def _report(self) -> None:
        sent_ended = -1
        while True:
            await asyncio.sleep(STATS_S)
            self._flush_stats(sent_ended)
            if self._fast is not None:
                sent_ended = self._fast.ended

    def _flush_stats(self, sent_ended: int) -> None:
        fast = self._fast
        if fast is None:
            return
        if self._served.items or fast.ended != sent_ended:
            items, self._served.items = self._served.items, []
            self.channel.send(ch.Stats(items, fast.ended))

    def stop(self) -> None:
        self._stopped.set()

    async def run(self) -> None:
        await self._stopped.wait()
        if self._node is not None:
            self._node.abort()
        if self._fast is not None and not self.channel.closed:
            await self._fast.shutdown(SHUTDOWN_TIMEOUT_S)
            self._flush_stats(-1)
        for task in list(self._tasks):
            task.cancel()
        self.channel.close()


async def _main(fd: int, gate_fd: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=fd)
    worker = Worker(sock, ReadGate.attach(gate_fd))
    loop.add_signal_handler(signal.SIGTERM, worker.stop)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, lambda: None)
    await worker.run()


def main() -> None:
    fd, gate_fd = int(sys.argv[1]), int(sys.argv[2])
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.Runner()
    with runner:
        runner.run(_main(fd, gate_fd))


if __name__ == "__main__":
    main()
