"""The fault recipes (on sleeping stand-in processes and a recording firewall) and the loop."""

from __future__ import annotations

import asyncio
import itertools
import random
import sys
import time
from pathlib import Path

import pytest

from raftkv.chaos.cluster import Cluster, NodeSpec
from raftkv.chaos.nemesis import FAULTS, PARTITIONS, Schedule, Target, run_nemesis, split_links

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
IDS = ["node-1", "node-2", "node-3"]


class RecordingFirewall:
    def __init__(self) -> None:
        self.cuts: list[set[tuple[str, str]]] = []
        self.links: tuple[object, ...] = ()

    def cut(self, links: list[tuple[object, object]]) -> None:
        self.links = tuple(links)
        self.cuts.append({(a.host, b.host) for a, b in links})  # type: ignore[attr-defined]

    def heal(self) -> None:
        self.links = ()


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    specs = [NodeSpec(n, f"127.0.0.{i}", 9000 + i, 8000 + i) for i, n in enumerate(IDS, 1)]
    c = Cluster(specs, SLEEPER, tmp_path / "c", tmp_path / "logs")
    c.start_all()
    yield c
    c.stop_all()


def host(node: str) -> str:
    return f"127.0.0.{node[-1]}"


def test_split_links_cut_both_ways() -> None:
    assert sorted(split_links(["a"], ["b", "c"])) == [
        ("a", "b"),
        ("a", "c"),
        ("b", "a"),
        ("c", "a"),
    ]


def test_kills_and_pauses_hit_the_right_nodes_and_undo(cluster: Cluster) -> None:
    rng = random.Random(1)
    applied = FAULTS["kill-leader"](Target(cluster, None, "node-2", rng))
    assert applied.nodes == ("node-2",) and "node-2 (leader)" in applied.detail
    assert applied.quorum_kept
    assert not cluster.nodes["node-2"].running and cluster.nodes["node-1"].running
    applied.undo()
    assert cluster.nodes["node-2"].running

    applied = FAULTS["kill-follower"](Target(cluster, None, "node-2", rng))
    assert applied.nodes[0] != "node-2" and not cluster.nodes[applied.nodes[0]].running
    applied.undo()

    applied = FAULTS["kill-majority"](Target(cluster, None, None, rng))
    assert len(applied.nodes) == 2 and not applied.quorum_kept  # failover cannot happen
    assert sum(not n.running for n in cluster.nodes.values()) == 2
    applied.undo()
    assert all(n.running for n in cluster.nodes.values())

    applied = FAULTS["pause-leader"](Target(cluster, None, "node-3", rng))
    assert cluster.nodes["node-3"].paused and applied.nodes == ("node-3",)
    applied.undo()
    assert not cluster.nodes["node-3"].paused

    applied = FAULTS["pause-leader"](Target(cluster, None, None, rng))  # nobody leads
    assert "no leader known" in applied.detail
    applied.undo()


def test_partitions_cut_the_right_links(cluster: Cluster) -> None:
    fw = RecordingFirewall()
    rng = random.Random(2)

    def cut(name: str, leader: str | None = "node-1") -> set[tuple[str, str]]:
        applied = FAULTS[name](Target(cluster, fw, leader, rng))  # type: ignore[arg-type]
        got = fw.cuts[-1]
        applied.undo()
        assert fw.links == ()
        return got

    h1, h2, h3 = (host(n) for n in IDS)
    assert cut("isolate-leader") == {(h1, h2), (h1, h3), (h2, h1), (h3, h1)}
    follower = cut("isolate-follower")
    (isolated,) = set.intersection(*(set(link) for link in follower))  # in every cut link
    assert isolated in (h2, h3) and len(follower) == 4
    assert len(cut("majority-minority")) == 4  # 1 node against 2, both ways
    bridge = cut("bridge")
    assert len(bridge) == 2 and all(h1 in link for link in bridge)
    one_way = cut("one-way")
    assert len(one_way) == 2 and (
        one_way == {(h1, h2), (h1, h3)} or one_way == {(h2, h1), (h3, h1)}
    )
    with pytest.raises(RuntimeError, match="firewall"):
        FAULTS["isolate-leader"](Target(cluster, None, "node-1", rng))


def test_every_partition_recipe_exists() -> None:
    assert set(PARTITIONS) <= set(FAULTS)


def test_the_loop_never_overlaps_faults_and_undoes_the_last(cluster: Cluster) -> None:
    windows: list = []
    t0 = time.monotonic()

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_nemesis(
                cluster,
                None,
                ["kill-follower", "pause-follower", "pause-leader"],
                random.Random(3),
                stop,
                lambda: time.monotonic() - t0,
                windows,
                Schedule(quiet_s=(0.01, 0.02), hold_s=(0.05, 0.1), settle_s=0.05),
            )
        )
        await asyncio.sleep(0.8)
        stop.set()
        await task

    asyncio.run(main())
    assert len(windows) >= 2
    for a, b in itertools.pairwise(windows):
        assert a.start <= a.end <= b.start
    assert all(n.running and not n.paused for n in cluster.nodes.values())
