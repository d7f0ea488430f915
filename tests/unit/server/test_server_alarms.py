"""The server side of the space alarms (server/alarms.py): 507 replies, status and readiness
views, and the leader's loop that proposes quota and disk alarm changes."""

from __future__ import annotations

from pathlib import Path

from raftkv.kv.commands import Command, Put, Result
from raftkv.kv.machine import apply_command
from raftkv.kv.quota import Alarm, SetQuota, SpaceRecord, space, usage
from raftkv.server.alarms import AlarmLoop, disk_low, quota_due
from raftkv.server.status import StatusProbe
from tests.unit.server.fakes import FakeNode, aio, client_for, make_settings


class SpaceFake(FakeNode):
    """A FakeNode that reports its space figures and remembers what it was asked to write."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.written: list[Command] = []

    def space(self) -> tuple[int, SpaceRecord]:
        return usage(self.state), space(self.state)

    def apply(self, cmd: Command) -> Result:
        self.index += 1
        return apply_command(self.state, cmd, self.index)

    async def write(self, cmd: Command) -> Result:
        self.written.append(cmd)
        return await super().write(cmd)


def test_disk_alarm_decision_has_hysteresis() -> None:
    margin = 1000
    assert disk_low(False, 999, margin)
    assert not disk_low(False, 1000, margin)
    assert disk_low(True, 1050, margin)  # raised: stays until margin + 10 %
    assert not disk_low(True, 1100, margin)
    assert disk_low(True, None, margin) and not disk_low(False, None, margin)  # no report
    assert not disk_low(True, 0, 0)  # margin turned off clears it


def test_quota_is_recorded_once_it_can_matter() -> None:
    assert not quota_due(0, 1000, 499)  # no quota in force, usage below half: no entry
    assert quota_due(0, 1000, 500)
    assert quota_due(2000, 1000, 0)  # a different quota in force: replaced
    assert quota_due(1000, 0, 0)  # turned off
    assert not quota_due(1000, 1000, 5000)


@aio
async def test_growing_writes_get_507_while_reads_and_deletes_work(tmp_path: Path) -> None:
    node = SpaceFake()
    node.apply(Put("k", "value"))
    node.apply(Alarm("node-2", True, 5))
    async with client_for(node, make_settings(tmp_path)) as c:
        resp = await c.put("/kv/new", json={"value": "x"})
        assert resp.status == 507
        body = await resp.json()
        assert body["code"] == "no_space" and "node-2" in body["error"]
        assert body["alarms"] == [{"alarm": "no_space", "cause": "disk", "member": "node-2"}]
        assert node.state.get("new") is None
        assert (await c.get("/kv/k")).status == 200
        assert (await c.put("/kv/k", json={"value": "small"})).status == 200  # not larger
        ready = await c.get("/ready")
        assert ready.status == 200
        assert (await ready.json())["alarms"] == body["alarms"]
        status = await (await c.get("/cluster/status")).json()
        assert status["alarms"] == body["alarms"]
        assert status["space"]["usage_bytes"] == usage(node.state)
        assert (await c.delete("/kv/k")).status == 200
        node.apply(Alarm("node-2", False))
        assert (await c.put("/kv/new", json={"value": "x"})).status == 200
        assert "alarms" not in await (await c.get("/ready")).json()
        local = await (await c.get("/cluster/local")).json()
        assert local["disk_free_bytes"] > 0 and local["min_free_bytes"] == 64 << 20


def _loop(node: SpaceFake, tmp_path: Path, probe: StatusProbe, **kw: int) -> AlarmLoop:
    return AlarmLoop(
        node,
        node,
        quota_bytes=kw.get("quota", 0),
        min_free_bytes=kw.get("margin", 0),
        data_dir=tmp_path,
        probe=probe,
    )


@aio
async def test_leader_proposes_disk_alarms_and_the_quota(tmp_path: Path) -> None:
    # Peers at 127.0.0.1:1..3 refuse connections: they do not answer, so theirs stay as they are.
    node = SpaceFake(http_peers={"node-1": "127.0.0.1:1", "node-2": "127.0.0.1:2"})
    node.apply(Alarm("node-2", True))
    node.apply(Alarm("node-9", True))  # not a member any more
    probe = StatusProbe(source_ip=None)
    try:
        await _loop(node, tmp_path, probe, margin=1 << 62).once()
        raised, removed = node.written
        assert isinstance(raised, Alarm) and raised.member == "node-1" and raised.active
        assert raised.free_bytes > 0
        assert removed == Alarm("node-9", False)  # nobody else could clear it
        node.written.clear()
        await _loop(node, tmp_path, probe).once()  # a margin of 0: our own alarm clears
        assert node.written == [Alarm("node-1", False, node.written[0].free_bytes)]  # type: ignore[union-attr]
        assert space(node.state).disk == ("node-2",)
        node.written.clear()
        node.apply(Alarm("node-2", False))
        node.apply(Put("big", "x" * 600))
        await _loop(node, tmp_path, probe, quota=1000).once()
        assert node.written == [SetQuota(1000)]
        assert space(node.state).quota_alarm  # usage 2 * 635 >= 1000
        node.leader_id = "node-2"
        node.written.clear()
        await _loop(node, tmp_path, probe, quota=5, margin=1 << 62).once()
        assert node.written == []  # a follower proposes nothing
    finally:
        await probe.close()
