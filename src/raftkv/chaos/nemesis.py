"""The nemesis: faults injected into the running cluster, one at a time, with quiet gaps.

Rules:
- A fault is a named recipe (`FAULTS`) that acts on the cluster now and returns how to undo it:
  kill -9 (undo: restart), SIGSTOP (undo: SIGCONT), or a set of cut links (undo: heal).
  Faults never overlap: the loop undoes one before it waits, then starts the next.
- Recipes that aim at "the leader" ask the cluster who leads at that moment; if nobody does, they
  pick a node at random and say so in the fault's detail.
- Partitions between the nodes only: the clients can always reach every node (a client's
  request to a cut-off node is the interesting case, not an unreachable client).
- Choices come from the seeded `random.Random`; which node leads does not, so a seed fixes the
  sequence of fault kinds and timings, not every target.
- Every fault becomes a `FaultWindow` (start, end on the run clock) for the report, even when
  the run is cancelled mid-fault: the undo runs in a `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from raftkv.chaos.cluster import Cluster
from raftkv.chaos.netfilter import Firewall

KILLS: Final = ("kill-follower", "kill-leader", "kill-majority")
PAUSES: Final = ("pause-follower", "pause-leader")
PARTITIONS: Final = ("isolate-follower", "isolate-leader", "majority-minority", "bridge", "one-way")


@dataclass(frozen=True, slots=True)
class FaultWindow:
    name: str
    detail: str  # what was done to whom, in words
    nodes: tuple[str, ...]  # the nodes hit (killed, paused, on the cut-off side)
    leader: str | None  # the leader when the fault began, if one was known
    start: float  # run clock
    end: float
    quorum_kept: bool = True  # a majority stayed up and connected (False: kill-majority)

    @property
    def hit_leader(self) -> bool:
        return self.leader is not None and self.leader in self.nodes


@dataclass(frozen=True, slots=True)
class Applied:
    detail: str
    nodes: tuple[str, ...]
    undo: Callable[[], None]
    quorum_kept: bool = True


@dataclass(frozen=True, slots=True)
class Target:
    """What a recipe acts on: the cluster, its firewall, the current leader, the rng."""

    cluster: Cluster
    firewall: Firewall | None
    leader: str | None
    rng: random.Random

    def leader_or_any(self) -> tuple[str, str]:
        if self.leader is not None:
            return self.leader, f"{self.leader} (leader)"
        node = self.rng.choice(self.cluster.ids)
        return node, f"{node} (no leader known; picked at random)"

    def follower(self) -> str:
        return self.rng.choice([n for n in self.cluster.ids if n != self.leader])

    def cut(self, links: Sequence[tuple[str, str]], detail: str, side: Sequence[str]) -> Applied:
        if self.firewall is None:
            raise RuntimeError("a partition fault needs the firewall (nftables, root)")
        firewall, specs = self.firewall, self.cluster.specs
        firewall.cut([(specs[a].endpoint, specs[b].endpoint) for a, b in links])
        return Applied(detail, tuple(sorted(side)), firewall.heal)


def split_links(side: Sequence[str], rest: Sequence[str]) -> list[tuple[str, str]]:
    """Both directions of every link between the two groups."""
    return [(a, b) for a in side for b in rest] + [(b, a) for a in side for b in rest]


def _kill(t: Target, nodes: Sequence[str], detail: str) -> Applied:
    procs = [t.cluster.nodes[n] for n in nodes]
    quorum_kept = len(nodes) < len(t.cluster.ids) // 2 + 1
    for proc in procs:
        proc.kill()

    def restart() -> None:
        for proc in procs:
            proc.start()

    return Applied(f"kill -9 {detail}; restart after", tuple(sorted(nodes)), restart, quorum_kept)


def _pause(t: Target, node: str, detail: str) -> Applied:
    proc = t.cluster.nodes[node]
    proc.pause()
    return Applied(f"SIGSTOP {detail}; SIGCONT after", (node,), proc.resume)


def _isolate(t: Target, node: str, detail: str) -> Applied:
    rest = [n for n in t.cluster.ids if n != node]
    return t.cut(split_links([node], rest), f"isolate {detail} from {', '.join(rest)}", [node])


def kill_follower(t: Target) -> Applied:
    node = t.follower()
    return _kill(t, [node], node)


def kill_leader(t: Target) -> Applied:
    return _kill(t, *_one(t.leader_or_any()))


def kill_majority(t: Target) -> Applied:
    ids = t.cluster.ids
    nodes = sorted(t.rng.sample(ids, len(ids) // 2 + 1))
    return _kill(t, nodes, ", ".join(nodes) + " (a majority)")


def pause_follower(t: Target) -> Applied:
    node = t.follower()
    return _pause(t, node, node)


def pause_leader(t: Target) -> Applied:
    node, detail = t.leader_or_any()
    return _pause(t, node, detail)


def isolate_follower(t: Target) -> Applied:
    node = t.follower()
    return _isolate(t, node, node)


def isolate_leader(t: Target) -> Applied:
    node, detail = t.leader_or_any()
    return _isolate(t, node, detail)


def majority_minority(t: Target) -> Applied:
    ids = list(t.cluster.ids)
    t.rng.shuffle(ids)
    minority, majority = sorted(ids[: (len(ids) - 1) // 2]), sorted(ids[(len(ids) - 1) // 2 :])
    where = "minority" if t.leader in minority else "majority"
    detail = f"split {{{', '.join(majority)}}} | {{{', '.join(minority)}}} (leader in {where})"
    return t.cut(split_links(minority, majority), detail, minority)


def bridge(t: Target) -> Applied:
    """Cut one link only (the leader's, to one follower): both still reach everybody else."""
    a, _ = t.leader_or_any()
    b = t.rng.choice([n for n in t.cluster.ids if n != a])
    return t.cut([(a, b), (b, a)], f"cut the link {a} <-> {b} only", [a, b])


def one_way(t: Target) -> Applied:
    """The leader can hear but not speak, or speak but not hear."""
    node, detail = t.leader_or_any()
    rest = [n for n in t.cluster.ids if n != node]
    if t.rng.random() < 0.5:
        links = [(node, r) for r in rest]
        words = f"drop what {detail} sends to {', '.join(rest)}"
    else:
        links = [(r, node) for r in rest]
        words = f"drop what {', '.join(rest)} send to {detail}"
    return t.cut(links, f"one-way: {words}", [node])


def _one(pair: tuple[str, str]) -> tuple[list[str], str]:
    return [pair[0]], pair[1]


FAULTS: Final[dict[str, Callable[[Target], Applied]]] = {
    "kill-follower": kill_follower,
    "kill-leader": kill_leader,
    "kill-majority": kill_majority,
    "pause-follower": pause_follower,
    "pause-leader": pause_leader,
    "isolate-follower": isolate_follower,
    "isolate-leader": isolate_leader,
    "majority-minority": majority_minority,
    "bridge": bridge,
    "one-way": one_way,
}


def needs_firewall(names: Sequence[str]) -> bool:
    return any(n in PARTITIONS for n in names)


@dataclass(frozen=True, slots=True)
class Schedule:
    quiet_s: tuple[float, float] = (1.5, 4.0)  # uniform gap before each fault
    hold_s: tuple[float, float] = (3.0, 8.0)  # uniform length of each fault
    settle_s: float = 15.0  # at most this long waiting for every node to be ready again


async def run_nemesis(
    cluster: Cluster,
    firewall: Firewall | None,
    names: Sequence[str],
    rng: random.Random,
    stop: asyncio.Event,
    now: Callable[[], float],
    windows: list[FaultWindow],
    schedule: Schedule | None = None,
) -> None:
    """Inject faults drawn from `names` until `stop` is set; append each to `windows`."""
    schedule = schedule or Schedule()
    while not await _stopped(stop, rng.uniform(*schedule.quiet_s)):
        if not await _healthy(cluster, stop, schedule.settle_s):
            break
        leader = await cluster.leader()
        name = rng.choice(list(names))
        start = now()
        applied = FAULTS[name](Target(cluster, firewall, leader, rng))
        try:
            await _stopped(stop, rng.uniform(*schedule.hold_s))
        finally:
            applied.undo()
            windows.append(
                FaultWindow(
                    name, applied.detail, applied.nodes, leader, start, now(), applied.quorum_kept
                )
            )


async def _healthy(cluster: Cluster, stop: asyncio.Event, limit_s: float) -> bool:
    """Wait (up to `limit_s`) until every node is ready; False if `stop` was set meanwhile."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while not await cluster.all_ready() and asyncio.get_running_loop().time() < deadline:
        if await _stopped(stop, 0.1):
            return False
    return not stop.is_set()


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` or until `stop` is set; True if it was set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()
