"""A tiny synchronous cluster for core unit tests: instant delivery, explicit drops."""

from __future__ import annotations

import random
from collections.abc import Callable

from raftkv.raft.config import RaftConfig
from raftkv.raft.messages import AnyMessage
from raftkv.raft.rawnode import RawNode
from raftkv.raft.ready import Apply, Persist, ReadStates, Ready, SendMessages
from raftkv.raft.storage import MemoryStorage
from raftkv.raft.types import ConfState, Entry, NodeId, ReadState, Role

Filter = Callable[[AnyMessage], bool]  # True = drop


def ids(n: int) -> list[NodeId]:
    return [NodeId(f"n{i}") for i in range(1, n + 1)]


class Cluster:
    def __init__(self, n: int = 3, *, seed: int = 1, learners: int = 0, **cfg: object) -> None:
        all_ids = ids(n + learners)
        self.conf = ConfState(tuple(all_ids[:n]), tuple(all_ids[n:]))
        self.cfg = cfg
        self.storages: dict[NodeId, MemoryStorage] = {}
        self.nodes: dict[NodeId, RawNode] = {}
        self.applied: dict[NodeId, list[Entry]] = {}
        self.read_states: dict[NodeId, list[ReadState]] = {}
        self.drop: Filter = lambda m: False
        self.in_flight: list[AnyMessage] = []
        self.rng = random.Random(seed)
        for node in all_ids:
            self.storages[node] = MemoryStorage(self.conf)
            self.nodes[node] = self._make(node)
            self.applied[node] = []
            self.read_states[node] = []

    def _make(self, node: NodeId) -> RawNode:
        config = RaftConfig(id=node, **self.cfg)  # type: ignore[arg-type]
        return RawNode(config, self.storages[node], random.Random(self.rng.random()))

    def restart(self, node: NodeId) -> None:
        """Restart from storage (memory storage here is always 'durable')."""
        self.nodes[node] = self._make(node)
        self.applied[node] = []

    def process(self, node: NodeId) -> list[AnyMessage]:
        """Run one Ready of `node`; return the messages it sends."""
        rn = self.nodes[node]
        if not rn.has_ready():
            return []
        return self.finish(node, rn.ready())

    def finish(self, node: NodeId, rd: Ready) -> list[AnyMessage]:
        """Execute a Ready already taken from `node` (persist, apply, advance); return the
        messages it sends. Between `ready()` and this call the core may be ticked and stepped,
        as the driver does while its writer thread fsyncs."""
        rn = self.nodes[node]
        out: list[AnyMessage] = []
        st = self.storages[node]
        for action in rd.steps():
            match action:
                case SendMessages(messages=msgs):
                    out.extend(msgs)
                case Persist(snapshot=snap, entries=ents, hard_state=hs):
                    if snap is not None:
                        st.apply_snapshot(snap)
                    st.append(list(ents))
                    if hs is not None:
                        st.set_hard_state(hs)
                case Apply(entries=ents):
                    self.applied[node].extend(ents)
                case ReadStates(read_states=rs):
                    self.read_states[node].extend(rs)
        rn.advance(rd)
        return out

    def settle(self, max_rounds: int = 1000) -> None:
        """Deliver messages until quiescent."""
        for _ in range(max_rounds):
            for node in sorted(self.nodes):
                self.in_flight.extend(self.process(node))
            if not self.in_flight:
                return
            msgs, self.in_flight = self.in_flight, []
            for m in msgs:
                if m.to in self.nodes and not self.drop(m):
                    self.nodes[m.to].step(m)
        raise AssertionError("cluster did not settle")

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for node in sorted(self.nodes):
                self.nodes[node].tick()
            self.settle()

    def leader(self) -> NodeId | None:
        leaders = [n for n, rn in self.nodes.items() if rn.status().role is Role.LEADER]
        assert len(leaders) <= 1 or len({self.nodes[x].status().term for x in leaders}) > 1
        return max(leaders, key=lambda x: self.nodes[x].status().term) if leaders else None

    def expire_leases(self) -> None:
        """As if an election timeout passed since anyone heard from a leader (§4.2.3)."""
        for rn in self.nodes.values():
            if rn.status().role is not Role.LEADER:
                rn.raft.election_elapsed = max(rn.raft.election_elapsed, rn.raft.cfg.election_ticks)
                rn.raft.heard_elapsed = max(rn.raft.heard_elapsed, rn.raft.cfg.election_ticks)

    def elect(self, node: NodeId) -> None:
        self.expire_leases()
        self.nodes[node].campaign()
        self.settle()
        assert self.nodes[node].status().role is Role.LEADER, self.nodes[node].status()
