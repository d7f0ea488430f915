"""The read workers follow the node's read state (server/read_workers.py rules): the shared gate
shuts and `Serving(False)` goes out the moment the node stops serving reads (a storage failure,
a halt, a stop), and new GET connections then stay with the node, which answers them with its
own error."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import cast

from raftkv.server import read_channel as ch
from raftkv.server.config import Settings
from raftkv.server.fast_routes import FastServer
from raftkv.server.read_gate import ReadGate
from raftkv.server.read_workers import ReadWorkers, _Worker
from tests.unit.server.fakes import aio


class _Node:
    """A FencedNode whose read state the test sets."""

    def __init__(self) -> None:
        self.serving = True
        self.listeners: list[Callable[[], None]] = []

    async def read_fence(
        self, *, linearizable: bool, min_revision: int = 0, lease: bool = False
    ) -> int:
        return 0

    def state_dir(self) -> os.PathLike[str] | None:
        return None

    def serves_reads(self) -> bool:
        return self.serving

    def when_reads_refused(self, callback: Callable[[], None]) -> None:
        self.listeners.append(callback)

    def refuse_reads(self) -> None:
        self.serving = False
        for callback in self.listeners:
            callback()


class _Channel:
    """Records what the node sends to a worker."""

    def __init__(self) -> None:
        self.sent: list[ch.Message] = []

    def send(self, msg: ch.Message, fd: int = -1) -> None:
        self.sent.append(msg)


@aio
async def test_workers_stop_serving_stale_reads_the_moment_the_node_refuses_reads() -> None:
    node = _Node()
    workers = ReadWorkers(node, cast(Settings, None), cast(FastServer, None), 1, "/unused")
    channel = _Channel()

    async def spawn(slot: int) -> None:  # a worker process that said Ready
        worker = _Worker(slot, cast(asyncio.subprocess.Process, None), ready=True)
        worker.channel = cast(ch.Channel, channel)
        workers._workers[slot] = worker
        workers._push_serving(worker)

    workers._spawn = spawn  # type: ignore[method-assign]
    await workers.start()
    assert channel.sent == [ch.Serving(True)]
    assert {workers.choose() for _ in range(4)} == {None, 0}  # the node keeps one share
    worker_view = ReadGate.attach(os.dup(workers._gate.fd))  # as a worker maps it
    assert not worker_view.is_shut()

    node.refuse_reads()  # e.g. an fsync failed: synchronously, on the failure path
    assert channel.sent == [ch.Serving(True), ch.Serving(False)]
    # The gate shut too, at once: a worker checks it before each reply (read_gate.py).
    assert worker_view.is_shut()
    # New GET connections are answered by the node itself (503), none handed to a worker.
    assert {workers.choose() for _ in range(4)} == {None}
    worker_view.close()
    workers._gate.close()
    node.refuse_reads()  # the node stopping after its workers did: nothing breaks
