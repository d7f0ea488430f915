"""Committed entries per second of the pure Raft core: 3 nodes in memory, no I/O.

Each loop turn proposes a batch (default 64) at the leader, then runs one Ready per node in id
order — persist into MemoryStorage, deliver every message at once to its target's `step`,
apply, advance — the batching model of ARCHITECTURE.md §1 with the network and disk taken
away. The figure is an upper bound for what the core itself allows, not a server's throughput.

    python -m raftkv.bench.core_throughput [--batch 64] [--seconds 3] [--payload 100] [--nodes 3]
"""

from __future__ import annotations

import argparse
import random
import time

from raftkv.raft.config import RaftConfig
from raftkv.raft.messages import AnyMessage
from raftkv.raft.rawnode import RawNode
from raftkv.raft.ready import Apply, Persist, SendMessages
from raftkv.raft.storage import MemoryStorage
from raftkv.raft.types import ConfState, NodeId, Role


class Bench:
    def __init__(self, n: int) -> None:
        self.ids = [NodeId(f"n{i}") for i in range(1, n + 1)]
        conf = ConfState(voters=tuple(self.ids))
        self.storages = {i: MemoryStorage(conf) for i in self.ids}
        self.nodes = {
            i: RawNode(RaftConfig(id=i), self.storages[i], random.Random(k))
            for k, i in enumerate(self.ids)
        }
        self.applied = dict.fromkeys(self.ids, 0)

    def turn(self) -> bool:
        """One Ready per node; True if any node had one."""
        busy = False
        for nid in self.ids:
            node = self.nodes[nid]
            if not node.has_ready():
                continue
            busy = True
            rd = node.ready()
            store = self.storages[nid]
            for action in rd.steps():
                match action:
                    case SendMessages(messages=msgs):
                        self.deliver(msgs)
                    case Persist(snapshot=snap, entries=entries, hard_state=hs):
                        if snap is not None:
                            store.apply_snapshot(snap)
                        store.append(entries)
                        if hs is not None:
                            store.set_hard_state(hs)
                    case Apply(entries=entries):
                        self.applied[nid] += len(entries)
                    case _:
                        pass
            node.advance(rd)
        return busy

    def deliver(self, msgs: tuple[AnyMessage, ...]) -> None:
        for m in msgs:
            self.nodes[m.to].step(m)

    def elect(self) -> RawNode:
        leader = self.nodes[self.ids[0]]
        leader.campaign()
        for _ in range(100):
            self.turn()
            if leader.status().role is Role.LEADER and leader.status().commit > 0:
                return leader
        raise RuntimeError("no leader elected")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--payload", type=int, default=100)
    ap.add_argument("--nodes", type=int, default=3)
    args = ap.parse_args()

    bench = Bench(args.nodes)
    leader = bench.elect()
    lead_id = leader.status().id
    data = b"x" * args.payload
    start_applied = bench.applied[lead_id]
    started = time.perf_counter()
    deadline = started + args.seconds
    turns = 0
    while time.perf_counter() < deadline:
        for _ in range(args.batch):
            leader.propose(data)
        bench.turn()
        turns += 1
    while bench.turn():  # drain what is in flight
        pass
    took = time.perf_counter() - started
    committed = bench.applied[lead_id] - start_applied
    assert all(v == bench.applied[lead_id] for v in bench.applied.values()), bench.applied
    print(
        f"{committed / took:,.0f} committed entries/s "
        f"({committed:,} entries in {took:.2f}s, {turns:,} loop turns, batch {args.batch}, "
        f"{args.nodes} nodes, {args.payload}-byte payloads, in memory, no I/O)"
    )


if __name__ == "__main__":
    main()
