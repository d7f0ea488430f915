"""A peer that comes back at a new IP under the same host name is reached again (issue 5).

The transport resolves the peer's host name on every connection attempt, so when the name
resolves elsewhere (a container or pod rescheduled with a new IP) no operator action is needed.
The name is resolved here by a stand-in for the system resolver; the default loop resolves
through `socket.getaddrinfo` (uvloop resolves in C, out of reach of the stand-in).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from raftkv.raft.types import NodeId
from tests.unit.transport.transport_helpers import Node, free_port, hb

NAME = "node-b.raftkv.test"


def test_peer_restarted_at_a_new_ip_is_reached_again(monkeypatch: pytest.MonkeyPatch) -> None:
    current = {"ip": "127.0.0.2"}
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real(current["ip"] if host == NAME else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    port = free_port("127.0.0.2")

    async def scenario() -> None:
        b = await Node("b", listen=("127.0.0.2", port), source_host="127.0.0.2").start()
        a = await Node("a", peers={NodeId("b"): (NAME, port)}).start()
        try:
            await a.connected_to(b)
            a.transport.send([hb("a", "b", 1)])
            assert await b.next() == hb("a", "b", 1)
            await b.stop()
            # b comes back on another address; only the name's resolution changes.
            current["ip"] = "127.0.0.3"
            b = await Node("b", listen=("127.0.0.3", port), source_host="127.0.0.3").start()
            await a.connected_to(b)
            a.transport.send([hb("a", "b", 2)])
            assert await b.next() == hb("a", "b", 2)
            assert b.transport.inbound_peers()[NodeId("a")][0] == "127.0.0.1"
        finally:
            await a.stop()
            await b.stop()

    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 20))
