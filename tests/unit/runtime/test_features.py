"""Feature gating by cluster version: the leader proposes a kind only when every member
understands it; members advertise what they understand in the peer Hello."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import msgspec
import pytest

from raftkv.codec.validate import InvalidMessage, check_message
from raftkv.codec.wire import PROTOCOL_VERSION, Hello
from raftkv.kv.commands import Compact, DeleteRange, Put, PutResult
from raftkv.kv.registry import BASE_COMMAND_SET, COMMAND_SET_VERSION
from raftkv.raft.types import NodeId, Role
from raftkv.runtime.api import FeatureNotEnabled
from raftkv.runtime.features import OWN_VERSIONS, check_enabled, cluster_versions
from raftkv.runtime.node import RaftKVNode
from raftkv.runtime.options import NodeOptions
from raftkv.storage.format import FORMAT_VERSION
from tests.unit.server.fakes import aio

OLD = (1, BASE_COMMAND_SET)  # what a round-1 node understands


def test_cluster_minimum_counts_every_member_and_unknown_as_old() -> None:
    cv = cluster_versions("n1", ["n1", "n2", "n3"], {"n2": OWN_VERSIONS, "n3": OWN_VERSIONS})
    assert (cv.format_version, cv.command_set) == OWN_VERSIONS
    assert cv.holding_back(COMMAND_SET_VERSION) == []

    mixed = cluster_versions("n1", ["n1", "n2", "n3"], {"n2": OWN_VERSIONS, "n3": OLD})
    assert (mixed.format_version, mixed.command_set) == OLD
    assert mixed.holding_back(COMMAND_SET_VERSION) == [f"n3 (at {BASE_COMMAND_SET})"]

    unheard = cluster_versions("n1", ["n1", "n2", "n3"], {"n2": OWN_VERSIONS})
    assert unheard.command_set == BASE_COMMAND_SET
    assert unheard.holding_back(COMMAND_SET_VERSION) == ["n3 (not heard from)"]
    # Versions of a node that is no longer a member do not count.
    gone = cluster_versions("n1", ["n1", "n2"], {"n2": OWN_VERSIONS, "n9": OLD})
    assert gone.command_set == COMMAND_SET_VERSION


def test_check_enabled_refuses_only_kinds_newer_than_the_cluster() -> None:
    old = cluster_versions("n1", ["n1", "n2"], {"n2": OLD})
    check_enabled(Put("k", "v"), old)  # since 1: every version has it
    with pytest.raises(FeatureNotEnabled) as info:
        check_enabled(Compact(revision=5), old)
    exc = info.value
    assert (exc.kind, exc.needs, exc.cluster_command_set) == ("compact", 2, 1)
    assert exc.waiting_for == ["n2 (at 1)"]
    check_enabled(Compact(revision=5), cluster_versions("n1", ["n1", "n2"], {"n2": OWN_VERSIONS}))


def test_binary_put_waits_for_command_set_2() -> None:
    # An old node's Put.value is str: a bytes value would be a committed entry it cannot decode.
    old = cluster_versions("n1", ["n1", "n2"], {"n2": OLD})
    with pytest.raises(FeatureNotEnabled) as info:
        check_enabled(Put("k", b"\x00\xff"), old)
    assert (info.value.kind, info.value.needs) == ("put (binary value)", 2)
    check_enabled(Put("k", b"\x00\xff"), cluster_versions("n1", ["n1"], {}))


def test_hello_versions_are_compatible_both_ways() -> None:
    # The Hello of round 1 had three fields: it decodes with versions 1 and 1.
    class OldHello(msgspec.Struct, frozen=True, array_like=True, tag="Hello"):
        protocol_version: int
        cluster_name: str
        node_id: str

    old_bytes = msgspec.msgpack.encode(OldHello(PROTOCOL_VERSION, "c", "n2"))
    hello = msgspec.msgpack.decode(old_bytes, type=Hello)
    assert (hello.format_version, hello.command_set) == (1, 1)
    # A round-1 node reading our Hello ignores the fields it does not know.
    new = Hello(PROTOCOL_VERSION, "c", NodeId("n2"), FORMAT_VERSION, COMMAND_SET_VERSION)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(new), type=OldHello).node_id == "n2"
    check_message(new)
    with pytest.raises(InvalidMessage, match="advertised versions out of range"):
        check_message(Hello(PROTOCOL_VERSION, "c", NodeId("n2"), 1, 0))


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _options(tmp_path: Path, ports: dict[NodeId, int], me: NodeId, **kw: object) -> NodeOptions:
    return NodeOptions(
        node_id=me,
        cluster_name="features",
        data_dir=tmp_path / me,
        raft_listen=("127.0.0.1", ports[me]),
        raft_advertise=f"127.0.0.1:{ports[me]}",
        http_advertise=f"127.0.0.1:{ports[me] + 1}",
        peers_raft={n: ("127.0.0.1", p) for n, p in ports.items()},
        peers_http={n: f"127.0.0.1:{p + 1}" for n, p in ports.items()},
        bootstrap_id=NodeId("n1"),
        tick_ms=10.0,
        **kw,  # type: ignore[arg-type]
    )


async def _until(what: str, probe: object, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not probe():  # type: ignore[operator]
            await asyncio.sleep(0.02)


@aio
async def test_mixed_version_cluster_gates_new_kinds_until_the_old_member_upgrades(
    tmp_path: Path,
) -> None:
    ids = [NodeId("n1"), NodeId("n2"), NodeId("n3")]
    ports = dict(zip(ids, _ports(3), strict=True))
    old = _options(tmp_path, ports, ids[2], advertise_versions=OLD)  # plays a round-1 node
    nodes = {n: RaftKVNode(_options(tmp_path, ports, n)) for n in ids[:2]}
    nodes[ids[2]] = RaftKVNode(old)
    try:
        for node in nodes.values():
            await node.start()

        def leader() -> RaftKVNode | None:
            for node in nodes.values():
                if node.driver.status().role is Role.LEADER:
                    return node
            return None

        await _until("a leader", leader)
        lead = leader()
        assert lead is not None
        await _until("every peer's Hello", lambda: len(lead.driver.transport.peer_versions()) == 2)
        assert lead.cluster_versions().command_set == BASE_COMMAND_SET
        assert isinstance(await lead.write(Put("k", "v")), PutResult)  # old kinds still work
        applied = lead.driver.sm.applied_index
        with pytest.raises(FeatureNotEnabled) as info:
            await lead.write(DeleteRange(prefix="k"))
        assert info.value.kind == "delete_range" and info.value.waiting_for == ["n3 (at 1)"]
        assert lead.driver.sm.applied_index == applied  # nothing was proposed
        assert nodes[ids[2]].local_status().command_set == BASE_COMMAND_SET

        # n3 is upgraded (restarted with the current code): the kind is enabled, no restart
        # of the leader needed.
        await nodes[ids[2]].stop()
        nodes[ids[2]] = RaftKVNode(_options(tmp_path, ports, ids[2]))
        await nodes[ids[2]].start()
        await _until(
            "the upgraded node's Hello",
            lambda: lead.cluster_versions().command_set == COMMAND_SET_VERSION,
        )
        if lead.driver.status().role is Role.LEADER:
            await lead.write(DeleteRange(prefix="k"))
            assert lead.driver.sm.get("k") is None
    finally:
        for node in nodes.values():
            await node.stop()


def test_leader_gate_follows_configuration_and_hello_changes() -> None:
    from types import SimpleNamespace

    from raftkv.raft.types import ConfState

    node = RaftKVNode.__new__(RaftKVNode)  # only what the gate reads
    node._versions = None
    node.opts = SimpleNamespace(node_id="n1")  # type: ignore[assignment]
    advertised = {NodeId("n2"): OWN_VERSIONS}
    raw = SimpleNamespace(conf=ConfState(voters=(NodeId("n1"), NodeId("n2"))), leader="n1")
    transport = SimpleNamespace(peer_versions=lambda: advertised)
    node.driver = SimpleNamespace(raw=raw, transport=transport)  # type: ignore[assignment]
    node._check_feature(Compact(revision=1))  # everyone at the current command set

    raw.conf = ConfState(voters=(NodeId("n1"), NodeId("n2")), learners=(NodeId("n3"),))
    with pytest.raises(FeatureNotEnabled, match=r"n3 \(not heard from\)"):
        node._check_feature(Compact(revision=1))  # a learner applies entries too
    advertised[NodeId("n3")] = OLD
    with pytest.raises(FeatureNotEnabled, match=r"n3 \(at 1\)"):
        node._check_feature(Compact(revision=1))
    advertised[NodeId("n3")] = OWN_VERSIONS
    node._check_feature(Compact(revision=1))
    raw.leader = "n2"  # a follower does not gate: the leader does
    advertised[NodeId("n3")] = OLD
    node._check_feature(Compact(revision=1))


@aio
async def test_http_reply_is_503_feature_not_enabled_with_context(tmp_path: Path) -> None:
    from tests.unit.server.fakes import FakeNode, client_for, make_settings

    node = FakeNode()
    node.fail_with = FeatureNotEnabled("txn", 2, 1, ["node-3 (at 1)"])
    async with client_for(node, make_settings(tmp_path)) as client:
        resp = await client.put("/kv/k", json={"value": "v"})
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "5"
        body = await resp.json()
    assert body["code"] == "feature_not_enabled"
    assert body["kind"] == "txn" and body["waiting_for"] == ["node-3 (at 1)"]
    assert (body["needs_command_set"], body["cluster_command_set"]) == (2, 1)
    assert "'txn' needs command set 2" in body["error"]
