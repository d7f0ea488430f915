"""Round trip and throughput of PeerTransport for a 64-entry AppendEntries.

Not a test (pytest does not collect it; timings are never asserted).

Two processes on loopback: this one is the "leader", a child process the "follower" that answers
every AppendEntries with an AppendEntriesResponse.
- round trip: one append in flight, N times; reports mean, p50, p99.
- throughput: `--window` appends in flight (a new one sent per response), for `--seconds`.

    .venv/bin/python tests/unit/transport/perf_transport.py [--loop asyncio] [--entry-bytes N]
        [--tls DIR]   # mutual TLS, certificates made by `raftkv certs init` in DIR
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import structlog
import uvloop

from raftkv.raft.messages import AnyMessage, AppendEntries, AppendEntriesResponse
from raftkv.raft.types import Entry, Index, NodeId, Term
from raftkv.transport.certs import CertLayout, init_certs
from raftkv.transport.tcp import PeerTransport
from raftkv.transport.tls import PeerTls, TlsFiles

LEADER, FOLLOWER = NodeId("leader"), NodeId("follower")


def quiet() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def peer_tls(certs: str | None, node: str) -> PeerTls | None:
    if certs is None:
        return None
    layout = CertLayout(Path(certs))
    return PeerTls(TlsFiles(layout.peer_cert(node), layout.peer_key(node), layout.ca_cert))


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    return uvloop.new_event_loop if name == "uvloop" else asyncio.new_event_loop


async def follower(port: int, leader_port: int, certs: str | None) -> None:
    transport: PeerTransport

    def on_message(msg: AnyMessage) -> None:
        if isinstance(msg, AppendEntries):
            last = msg.entries[-1].index if msg.entries else msg.prev_index
            transport.send([AppendEntriesResponse(msg.term, FOLLOWER, LEADER, last)])

    transport = PeerTransport(
        FOLLOWER,
        "bench",
        ("127.0.0.1", port),
        {LEADER: ("127.0.0.1", leader_port)},
        on_message,
        source_host="127.0.0.1",
        tls=peer_tls(certs, FOLLOWER),
    )
    await transport.start()
    await asyncio.Event().wait()  # until killed


async def leader(args: argparse.Namespace) -> None:
    responses: asyncio.Queue[AnyMessage] = asyncio.Queue()
    if args.tls is not None:
        init_certs(Path(args.tls), [LEADER, FOLLOWER], ["127.0.0.1"], force=True)
    transport = PeerTransport(
        LEADER,
        "bench",
        ("127.0.0.1", 0),
        {},
        responses.put_nowait,
        source_host="127.0.0.1",
        tls=peer_tls(args.tls, LEADER),
        is_member=lambda peer: peer == FOLLOWER,
    )
    await transport.start()
    my_port = transport.listen_address[1]
    follower_port = args.port
    child = subprocess.Popen(
        [sys.executable, __file__, "--role", "follower", "--loop", args.loop,
         "--port", str(follower_port), "--leader-port", str(my_port),
         *(["--tls", args.tls] if args.tls else [])]
    )  # fmt: skip
    try:
        transport.update_peer(FOLLOWER, ("127.0.0.1", follower_port))
        async with asyncio.timeout(10):
            while FOLLOWER not in transport.connected_peers() or not transport.inbound_peers():
                await asyncio.sleep(0.01)
        entries = tuple(
            Entry(Term(1), Index(i + 1), data=b"x" * args.entry_bytes) for i in range(64)
        )
        msg = AppendEntries(Term(1), LEADER, FOLLOWER, Index(0), Term(0), entries, Index(0))

        for _ in range(500):  # warm up
            transport.send([msg])
            await responses.get()
        samples = []
        for _ in range(args.count):
            start = time.perf_counter()
            transport.send([msg])
            await responses.get()
            samples.append(time.perf_counter() - start)
        samples.sort()
        tag = f"{args.loop} tls" if args.tls else args.loop
        us = [s * 1e6 for s in samples]
        print(
            f"[{tag}] round trip, 64 entries x {args.entry_bytes} B, one in flight: "
            f"mean {statistics.fmean(us):.0f} us, p50 {us[len(us) // 2]:.0f} us, "
            f"p99 {us[int(len(us) * 0.99)]:.0f} us ({1e6 / statistics.fmean(us):.0f} msg/s)"
        )

        transport.send([msg] * args.window)
        done = 0
        deadline = time.perf_counter() + args.seconds
        start = time.perf_counter()
        cpu_start = time.process_time()
        while time.perf_counter() < deadline:
            await responses.get()
            done += 1
            transport.send([msg])
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        print(
            f"[{tag}] throughput, {args.window} in flight: {done / elapsed:.0f} appends/s "
            f"({done / elapsed * 64:.0f} entries/s); leader CPU {cpu / done * 1e6:.0f} us/append"
        )
    finally:
        child.kill()
        child.wait()
        await transport.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=["leader", "follower"], default="leader")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--port", type=int, default=47931)
    parser.add_argument("--leader-port", type=int, default=0)
    parser.add_argument("--entry-bytes", type=int, default=100)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--tls", default=None, help="certificate directory: mutual TLS")
    args = parser.parse_args()
    quiet()
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        if args.role == "follower":
            runner.run(follower(args.port, args.leader_port, args.tls))
        else:
            runner.run(leader(args))


if __name__ == "__main__":
    main()
