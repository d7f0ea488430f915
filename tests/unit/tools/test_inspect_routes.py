"""GET /debug/keys and /debug/log over real storage objects, served like production."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from raftkv.codec.commands import encode_command
from raftkv.kv.commands import Put
from raftkv.raft.types import Entry, HardState, Index, NodeId, Term
from raftkv.runtime.inspect import NodeInspector
from raftkv.storage.raftlog import DurableLog
from raftkv.storage.state_lmdb import LmdbState
from tests.unit.server.fakes import FakeNode, aio, client_for, make_settings


class InspectableNode(FakeNode):
    def __init__(self, driver: Any) -> None:
        super().__init__()
        self._driver = driver

    def inspector(self) -> NodeInspector:
        return NodeInspector(self._driver)


def puts(n: int) -> list[Entry]:
    return [
        Entry(Term(1), Index(i), data=encode_command(Put(f"k{i:02d}", f"v{i}")))
        for i in range(1, n + 1)
    ]


@aio
async def test_keys_pages_and_log_ranges(tmp_path: Path) -> None:
    node_dir = tmp_path / "node"
    entries = puts(12)
    state = LmdbState.open(node_dir / "state")
    log = DurableLog.open(node_dir / "raft.db")
    try:
        state.apply(entries)
        log.save(HardState(Term(1), NodeId("node-1"), Index(12)), entries, None)
        driver = SimpleNamespace(
            sm=state,
            durable=log,
            opts=SimpleNamespace(data_dir=node_dir),
            check_readable=lambda: None,  # a node that serves reads
        )
        async with client_for(InspectableNode(driver), make_settings(tmp_path)) as client:
            resp = await client.get("/debug/keys?limit=5")
            body = await resp.json()
            assert resp.status == 200
            assert body["applied_index"] == 12 and body["count"] == 5
            assert [i["key"] for i in body["items"]] == ["k01", "k02", "k03", "k04", "k05"]
            assert body["next_after"] == "k05"
            resp = await client.get("/debug/keys?limit=100&after=k10")
            body = await resp.json()
            assert [i["key"] for i in body["items"]] == ["k11", "k12"]
            assert body["next_after"] is None
            body = await (await client.get("/debug/keys?prefix=k1")).json()
            assert [i["value"] for i in body["items"]] == ["v10", "v11", "v12"]

            body = await (await client.get("/debug/log?limit=3")).json()  # the last 3
            assert [e["index"] for e in body["entries"]] == [10, 11, 12]
            assert body["entries"][0] == {
                "index": 10,
                "term": 1,
                "type": "put",
                "command": {"key": "k10", "value": "v10"},
                "bytes": len(entries[9].data),
            }
            assert (body["first_index"], body["last_index"], body["entry_count"]) == (1, 12, 12)
            assert body["snapshots"] == [] and body["node_id"] == "node-1"
            body = await (await client.get("/debug/log?from=2&limit=2")).json()
            assert [e["index"] for e in body["entries"]] == [2, 3]
            body = await (await client.get("/debug/log?from=50")).json()
            assert body["entries"] == []

            for path, param in (
                ("/debug/log?from=x", "from"),
                ("/debug/log?limit=100000", "limit"),
                ("/debug/keys?limit=0", "limit"),
            ):
                resp = await client.get(path)
                body = await resp.json()
                assert resp.status == 400, path
                assert body["code"] == "invalid_parameter" and body["parameter"] == param
    finally:
        log.close()
        state.close()


@aio
async def test_a_node_without_inspector_answers_501(tmp_path: Path) -> None:
    async with client_for(FakeNode(), make_settings(tmp_path)) as client:
        for path in ("/debug/keys", "/debug/log"):
            resp = await client.get(path)
            assert resp.status == 501
            assert (await resp.json())["code"] == "not_supported"
