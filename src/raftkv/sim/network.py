"""The simulated network between Raft peers.

Rules:
- Every link (src, dst) is directed; a message is lost when its link is cut at send time or at
  delivery time (a connection breaking while a message is in flight).
- Delay is drawn per message (exponential jitter over a base latency, times a per-link factor
  in [0.5, 2) so some links are slower than others), so messages reorder naturally; a small
  probability of duplication and of loss applies on every link.
- Partitions are sets of cut directed links, each with an id, so overlapping partitions can heal
  independently; `heal_all` ends them all.
- All randomness comes from the rng passed in; ids are iterated sorted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from raftkv.raft.types import NodeId


@dataclass(frozen=True, slots=True)
class NetProfile:
    """How messages travel. Delays are in time units (see `scheduler.TICK`)."""

    base_delay: int = 40  # minimum one-way latency
    mean_jitter: int = 150  # mean of the exponential extra delay
    slow_prob: float = 0.02  # chance a message takes a long detour (reordering)
    slow_delay: int = 3000  # upper bound of such a detour
    drop_prob: float = 0.01
    dup_prob: float = 0.01


class Network:
    def __init__(self, rng: random.Random, profile: NetProfile) -> None:
        self.rng = rng
        self.profile = profile
        self._cuts: dict[int, frozenset[tuple[NodeId, NodeId]]] = {}  # partition id -> cut links
        self._cut_count: dict[tuple[NodeId, NodeId], int] = {}  # link -> partitions cutting it
        self._next_id = 0
        self.lossy = True  # False while the end of a run lets the cluster settle
        self._factor: dict[tuple[NodeId, NodeId], float] = {}  # per-link latency multiplier

    # -- partitions ---------------------------------------------------------------------------
    def cut(self, links: list[tuple[NodeId, NodeId]]) -> int:
        """Cut the given directed links; returns the partition id for `heal`."""
        self._next_id += 1
        cut = frozenset(links)
        self._cuts[self._next_id] = cut
        for link in sorted(cut):
            self._cut_count[link] = self._cut_count.get(link, 0) + 1
        return self._next_id

    def isolate(self, node: NodeId, others: list[NodeId], inbound: bool, outbound: bool) -> int:
        links: list[tuple[NodeId, NodeId]] = []
        for o in sorted(others):
            if o == node:
                continue
            if outbound:
                links.append((node, o))
            if inbound:
                links.append((o, node))
        return self.cut(links)

    def split(self, side_a: list[NodeId], side_b: list[NodeId]) -> int:
        """A symmetric partition between two groups."""
        links = [(a, b) for a in sorted(side_a) for b in sorted(side_b)]
        links += [(b, a) for a in sorted(side_a) for b in sorted(side_b)]
        return self.cut(links)

    def heal(self, partition_id: int) -> None:
        cut = self._cuts.pop(partition_id, None)
        if cut is None:
            return
        for link in sorted(cut):
            n = self._cut_count[link] - 1
            if n:
                self._cut_count[link] = n
            else:
                del self._cut_count[link]

    def heal_all(self) -> None:
        self._cuts.clear()
        self._cut_count.clear()

    def partitions(self) -> list[int]:
        return sorted(self._cuts)

    def blocked(self, src: NodeId, dst: NodeId) -> bool:
        return (src, dst) in self._cut_count

    # -- sending ------------------------------------------------------------------------------
    def delays(self, src: NodeId, dst: NodeId) -> list[int]:
        """Delivery delays for one message: [] when lost, two entries when duplicated."""
        p = self.profile
        rng = self.rng
        if self.lossy and rng.random() < p.drop_prob:
            return []
        factor = self._factor.get((src, dst))
        if factor is None:  # drawn on first use: deterministic, since sends are
            factor = self._factor[(src, dst)] = rng.uniform(0.5, 2.0)
        out = [self._one_delay(factor)]
        if self.lossy and rng.random() < p.dup_prob:
            out.append(self._one_delay(factor))
        return out

    def _one_delay(self, factor: float) -> int:
        p = self.profile
        rng = self.rng
        d = int((p.base_delay + rng.expovariate(1.0 / p.mean_jitter)) * factor)
        if self.lossy and rng.random() < p.slow_prob:
            d += rng.randrange(p.slow_delay)
        return d
