"""Members a known member vouches for (runtime/member_table.py): a node that lags behind conf
changes admits and dials them until its own record holds them, and never a removed id."""

from __future__ import annotations

from raftkv.raft.types import ConfState, NodeId
from raftkv.runtime.member_table import MemberTable
from raftkv.runtime.members import ClusterRecord, MemberInfo
from tests.unit.security.test_driver_membership import driver

N1, N2, N3, N4, N5 = (NodeId(f"node-{i}") for i in range(1, 6))
INFO = MemberInfo("127.0.0.1:1", "127.0.0.1:2")


class Dialer:
    def __init__(self) -> None:
        self.peers: dict[NodeId, tuple[str, int]] = {}
        self.removed: list[NodeId] = []

    def update_peer(self, node_id: NodeId, addr: tuple[str, int]) -> None:
        self.peers[node_id] = addr

    def remove_peer(self, node_id: NodeId) -> None:
        self.removed.append(node_id)
        self.peers.pop(node_id, None)


def test_vouched_members_are_dialled_until_the_record_holds_them() -> None:
    table = MemberTable(N3)
    table.load(ClusterRecord({N1: INFO, N2: INFO, N3: INFO}, (N1, N2, N3), (N4,)))
    dial = Dialer()
    theirs = {
        N2: INFO,
        N3: INFO,
        N4: MemberInfo("127.0.0.4:9", "127.0.0.4:8"),  # removed in OUR record: never again
        N5: MemberInfo("127.0.0.5:7", "127.0.0.5:6"),
        "node-6": MemberInfo("127.0.0.6:5", "127.0.0.6:4"),
        "node-7": MemberInfo("no-port", "127.0.0.7:4"),  # nowhere to dial
    }
    assert table.vouch("node-2's record", theirs, {"node-6"}, dial) == [N5]
    assert dial.peers == {N5: ("127.0.0.5", 7)}
    assert set(table.vouched) == {N5}
    assert table.vouch("node-2's record", theirs, set(), dial) == ["node-6"]  # asked again

    # Our record catches up: node-5 is a member now, node-6 was removed meanwhile.
    record = ClusterRecord({N3: INFO, N5: INFO}, (N1, N2, N3), ("node-1", "node-2", "node-6"))
    table.adopt(record, dial, ConfState(voters=(N3, N5)))
    assert table.vouched == {}
    assert "node-6" in dial.removed and N5 not in dial.removed


def test_the_driver_admits_a_vouched_id_without_tls() -> None:
    d = driver(N3, ClusterRecord({N1: INFO, N2: INFO, N3: INFO}, (N1, N2, N3)), (N1, N2, N3))
    assert not d._admits(N5)  # unknown, nothing proves it (the `mallory` rule)
    d.table.vouch("node-1's record", {N5: INFO}, set(), Dialer())
    assert d._admits(N5)
    assert not d._admits(NodeId("mallory"))
