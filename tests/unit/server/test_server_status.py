"""GET /cluster/status: the seed's shape, peers asked concurrently, unreachable ones Unknown."""

from __future__ import annotations

import re
from pathlib import Path

from raftkv.runtime.api import LocalStatus
from raftkv.server.status import current_leader
from tests.unit.server.fakes import FakeNode, aio, client_for, closed_port, make_settings


@aio
async def test_status_with_a_follower_and_an_unreachable_peer(tmp_path: Path) -> None:
    follower = FakeNode("node-2", leader_id="node-1")
    async with client_for(follower, make_settings(tmp_path, "node-2")) as follower_client:
        peers = {
            "node-1": "127.0.0.1:1",
            "node-2": f"127.0.0.1:{follower_client.port}",
            "node-3": f"127.0.0.1:{closed_port()}",
        }
        follower.http_peers = dict(peers)
        leader = FakeNode("node-1", http_peers=peers, term=3)
        follower.term = 3
        async with client_for(leader, make_settings(tmp_path, "node-1")) as client:
            resp = await client.get("/cluster/status")
            assert resp.status == 200
            body = await resp.json()

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body.pop("timestamp"))
    assert body == {
        "cluster_size": 3,
        "is_leader": True,
        "local_node_id": "node-1",
        "leader": "node-1",
        "nodes": {
            "node-1": {
                "id": "node-1",
                "address": "127.0.0.1:9001",
                "http_address": "127.0.0.1:1",
                "is_leader": True,
                "state": "Leader",
                "term": 3,
                "commit_index": 7,
                "applied_index": 6,
                "last_index": 8,
                "format_version": 1,
                "command_set": 1,
            },
            "node-2": {
                "id": "node-2",
                "address": "127.0.0.1:9002",
                "http_address": peers["node-2"],
                "is_leader": False,
                "state": "Follower",
                "term": 3,
                "commit_index": 7,
                "applied_index": 6,
                "last_index": 8,
                "format_version": 1,
                "command_set": 1,
            },
            "node-3": {
                "id": "node-3",
                "address": "127.0.0.1:9003",
                "http_address": peers["node-3"],
                "is_leader": False,
                "state": "Unknown",
                "term": 0,
                "commit_index": 0,
                "applied_index": 0,
                "last_index": 0,
                "format_version": None,
                "command_set": None,
            },
        },
        "cluster_version": {"format_version": 1, "command_set": 1},
    }
    assert list(body["nodes"]) == ["node-1", "node-2", "node-3"]


@aio
async def test_status_from_a_follower_names_the_leader(tmp_path: Path) -> None:
    follower = FakeNode("node-2", leader_id="node-1")  # peers unreachable (ports 1 and 3)
    async with client_for(follower, make_settings(tmp_path, "node-2")) as client:
        body = await (await client.get("/cluster/status")).json()
    assert body["is_leader"] is False
    assert body["local_node_id"] == "node-2"
    assert body["leader"] == "node-1"
    assert body["nodes"]["node-1"]["is_leader"] is True
    assert body["nodes"]["node-1"]["state"] == "Unknown"
    assert body["nodes"]["node-2"]["state"] == "Follower"


@aio
async def test_peer_answering_with_another_identity_is_unknown(tmp_path: Path) -> None:
    impostor = FakeNode("node-9", leader_id="node-9", http_peers={"node-9": "127.0.0.1:9"})
    async with client_for(impostor, make_settings(tmp_path, "node-2")) as imp_client:
        leader = FakeNode(
            http_peers={
                "node-1": "127.0.0.1:1",
                "node-2": f"127.0.0.1:{imp_client.port}",
                "node-3": "127.0.0.1:3",
            }
        )
        async with client_for(leader, make_settings(tmp_path)) as client:
            body = await (await client.get("/cluster/status")).json()
    assert body["nodes"]["node-2"]["state"] == "Unknown"


def status(node_id: str, role: str, term: int, leader_id: str | None) -> LocalStatus:
    return LocalStatus(node_id, role, term, leader_id, 0, 0, 0, "h:1", "h:2")


def test_current_leader_prefers_the_highest_term() -> None:
    stale = status("node-1", "Leader", 2, "node-1")  # deposed, has not noticed yet
    fresh = status("node-3", "Leader", 5, "node-3")
    follower = status("node-2", "Follower", 5, "node-3")
    statuses: dict[str, LocalStatus | None] = {"node-1": stale, "node-2": follower, "node-3": fresh}
    assert current_leader(statuses, stale) == "node-3"
    assert current_leader({"node-1": stale, "node-3": None}, stale) == "node-1"
    nobody = status("node-2", "Candidate", 6, None)
    assert current_leader({"node-2": nobody}, nobody) is None


@aio
async def test_status_reports_versions_and_their_minimum(tmp_path: Path) -> None:
    follower = FakeNode("node-2", leader_id="node-1")
    follower.versions = (2, 2)
    async with client_for(follower, make_settings(tmp_path, "node-2")) as follower_client:
        peers = {"node-1": "127.0.0.1:1", "node-2": f"127.0.0.1:{follower_client.port}"}
        follower.http_peers = dict(peers)
        leader = FakeNode("node-1", http_peers=peers)
        for versions, expect in (((2, 2), (2, 2)), ((2, 3), (2, 2)), ((1, 1), (1, 1))):
            leader.versions = versions
            async with client_for(leader, make_settings(tmp_path, "node-1")) as client:
                body = await (await client.get("/cluster/status")).json()
            assert body["nodes"]["node-1"]["command_set"] == versions[1]
            assert body["nodes"]["node-2"]["command_set"] == 2
            cv = body["cluster_version"]
            assert (cv["format_version"], cv["command_set"]) == expect
