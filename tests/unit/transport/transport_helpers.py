"""Helpers for the transport tests: small in-process clusters, raw peers, condition waits.

Waiting is always on a condition with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from raftkv.raft.messages import AnyMessage, Heartbeat
from raftkv.raft.types import Index, NodeId, Term
from raftkv.transport._common import TransportTuning
from raftkv.transport.tcp import PeerTransport

T = TypeVar("T")

FAST = TransportTuning(backoff_initial=0.005, backoff_max=0.05, stable_after=0.2, hello_timeout=1.0)


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until `predicate()` holds, polling each few ms; fail after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for a peer that will only start later)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def hb(frm: str, to: str, commit: int = 0, term: int = 1) -> Heartbeat:
    return Heartbeat(Term(term), NodeId(frm), NodeId(to), Index(commit))


class Node:
    """A PeerTransport with an inbox and recorded callbacks."""

    def __init__(
        self,
        node_id: str,
        *,
        peers: dict[NodeId, tuple[str, int]] | None = None,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        source_host: str | None = "127.0.0.1",
        cluster: str = "test",
        snapshot_dir: Path | None = None,
        tuning: TransportTuning = FAST,
        **kwargs: Any,
    ) -> None:
        self.id = NodeId(node_id)
        self.inbox: asyncio.Queue[AnyMessage] = asyncio.Queue()
        self.unreachable: list[NodeId] = []
        self.snapshot_status: list[tuple[NodeId, bool]] = []
        # Most tests here are about moving bytes, not admission: any id may connect unless a
        # test says otherwise (tests/unit/transport/test_peer_admission.py does).
        kwargs.setdefault("is_member", lambda _peer: True)
        self.transport = PeerTransport(
            self.id,
            cluster,
            listen,
            peers or {},
            self.inbox.put_nowait,
            source_host=source_host,
            on_unreachable=self.unreachable.append,
            on_snapshot_status=lambda p, ok: self.snapshot_status.append((p, ok)),
            snapshot_dir=snapshot_dir,
            tuning=tuning,
            **kwargs,
        )

    @property
    def addr(self) -> tuple[str, int]:
        return self.transport.listen_address

    async def start(self) -> Node:
        await self.transport.start()
        return self

    async def stop(self) -> None:
        await self.transport.stop()

    async def next(self, timeout: float = 5.0) -> AnyMessage:
        async with asyncio.timeout(timeout):
            return await self.inbox.get()

    async def connected_to(self, *others: Node) -> None:
        await eventually(lambda: all(o.id in self.transport.connected_peers() for o in others))


async def wire(nodes: list[Node]) -> None:
    """Tell every node every other node's address and wait until all links are up."""
    for node in nodes:
        for other in nodes:
            if other is not node:
                node.transport.update_peer(other.id, other.addr)
    for node in nodes:
        await node.connected_to(*(o for o in nodes if o is not node))


@contextlib.asynccontextmanager
async def cluster(*ids: str, **kwargs: Any) -> AsyncIterator[dict[str, Node]]:
    nodes = {i: await Node(i, **kwargs).start() for i in ids}
    try:
        await wire(list(nodes.values()))
        yield nodes
    finally:
        for node in nodes.values():
            await node.stop()
