"""Core bugs the simulator found, reduced to deterministic repros; each stays as a regression."""

from __future__ import annotations

import pytest

from raftkv.raft import raft as raft_module
from raftkv.raft.messages import AnyMessage, AppendEntriesResponse
from raftkv.raft.progress import Progress
from raftkv.raft.types import NodeId
from tests.unit.raft.harness import Cluster

N1, N3 = NodeId("n1"), NodeId("n3")


def test_snapshot_due_to_inactive_replicating_follower_does_not_spin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A follower in REPLICATE whose next entry is compacted, and that is not recent_active:
    `_send_snapshot` declines to send, yet `maybe_send_append` returns True, so `bcast_append`
    (`while maybe_send_append(...) and pr.state is REPLICATE`) never ends."""
    c = Cluster(3, max_append_bytes=1)  # one entry per append: n3's window stops mid-log
    c.elect(N1)
    c.drop = lambda m: N3 in (m.from_, m.to)
    for i in range(5):
        c.nodes[N1].propose(f"v{i}".encode())
    c.settle()
    cut = False

    def drop(m: AnyMessage) -> bool:
        nonlocal cut
        if cut:
            return N3 in (m.from_, m.to)
        if isinstance(m, AppendEntriesResponse) and m.from_ == N3 and not m.reject:
            cut = True  # n3's first successful probe ack gets through, then n3 goes silent
        return False

    c.drop = drop
    c.tick_all(1)
    pr = c.nodes[N1].raft.progress[N3]
    assert pr.state.value == "replicate" and pr.next <= c.nodes[N1].raft.log.last_index()
    c.tick_all(8)  # CheckQuorum clears n3's recent_active
    assert not pr.recent_active
    st = c.nodes[N1].status()
    c.storages[N1].create_snapshot(st.applied, st.conf, b"image")
    c.storages[N1].compact(st.applied)

    calls = 0
    inner = raft_module.Raft.maybe_send_append

    def counted(
        self: raft_module.Raft, to: NodeId, p: Progress, *, send_empty: bool = True
    ) -> bool:
        nonlocal calls
        calls += 1
        if calls > 1000:
            raise AssertionError(f"bcast_append spins on {to}: next {p.next}, state {p.state}")
        return inner(self, to, p, send_empty=send_empty)

    monkeypatch.setattr(raft_module.Raft, "maybe_send_append", counted)
    c.nodes[N1].propose(b"x")
    c.nodes[N1].has_ready()  # flush() -> bcast_append
