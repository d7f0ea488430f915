"""The `--join` URL as a vouch source (server/members_routes.py): a member restarted after every
member it knows was removed has nobody left to vouch for the new ones, so without peer TLS it
refused the new leader for good (the chaos membership run, seed 1). The URL the operator named
may vouch -- but only with our cluster's record that lists this node, at its own Raft address
(or as removed); an id nobody vouches for is still refused (the `mallory` rule)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from raftkv.raft.types import NodeId
from raftkv.runtime.driver import RaftDriver
from raftkv.runtime.members import ClusterRecord, MemberInfo
from raftkv.server import joining, members_routes
from raftkv.server.joining import resolve, save_member_files
from raftkv.server.members_routes import _MemberRoutes
from raftkv.server.tls import HttpTlsFiles
from tests.unit.membership.test_vouched_members import Dialer
from tests.unit.security.test_driver_membership import driver
from tests.unit.server.fakes import aio, closed_port, make_settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

N1, N2, N3, N5, N6 = (NodeId(f"node-{i}") for i in (1, 2, 3, 5, 6))
ME_RAFT = "127.0.0.1:9003"  # node-3's address in the fakes' cluster.yaml
DEADLINE_S = 20.0


class Members:
    """What the removal watch asks of the MembershipManager, over a real driver's table."""

    def __init__(self, d: RaftDriver) -> None:
        self.d = d
        self.dialer = Dialer()
        self.removed_by: str | None = None

    def leader(self) -> tuple[str | None, str | None]:
        return None, None  # the restarted node knows no leader: the watch runs

    def record(self) -> ClusterRecord:
        return self.d.table.record

    def learned_members(
        self, source: str, members: dict[str, MemberInfo], removed: set[str]
    ) -> list[str]:
        return self.d.table.vouch(source, members, removed, self.dialer)

    def learned_removed(self, source: str) -> None:
        self.removed_by = source


def restarted_node3(tmp_path: Path, join_url: str | None) -> tuple[RaftDriver, _MemberRoutes]:
    """node-3 after a restart: it knows node-1 and node-2 only, and both are gone."""
    gone = MemberInfo("127.0.0.1:1", f"127.0.0.1:{closed_port()}")
    record = ClusterRecord({N1: gone, N2: gone, N3: MemberInfo(ME_RAFT, "127.0.0.1:8003")})
    d = driver(N3, record, (N1, N2, N3))
    settings = make_settings(tmp_path, "node-3", join_url=join_url)
    return d, _MemberRoutes(Members(d), settings)  # type: ignore[arg-type]


def config_doc(
    *, name: str = "test-cluster", me: str | None = ME_RAFT, removed: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A /cluster/config answer of node-5: members node-3 (at `me`), node-5 and node-6."""
    members = {
        "node-5": {"raft_address": "127.0.0.5:9005", "http_address": "127.0.0.5:8005"},
        "node-6": {"raft_address": "127.0.0.6:9006", "http_address": "127.0.0.6:8006"},
    }
    if me is not None:
        members["node-3"] = {"raft_address": me, "http_address": "127.0.0.1:8003"}
    return {
        "config": {"cluster": {"name": name}},
        "initial_voters": ["node-1", "node-2", "node-3"],
        "removed": ["node-1", "node-2", *removed],
        "members": members,
    }


def test_the_join_urls_record_vouches_only_when_it_lists_this_node(tmp_path: Path) -> None:
    d, routes = restarted_node3(tmp_path, "http://127.0.0.5:8005")
    assert not d._admits(N5)  # unknown, nobody vouched: refused without TLS
    refused = {
        "another cluster's record": config_doc(name="other-cluster"),
        "a record without this node": config_doc(me=None),
        "this id at another address": config_doc(me="127.0.0.9:9003"),
        "no configuration": {k: v for k, v in config_doc().items() if k != "config"},
        "not an object": ["node-5"],
    }
    for why, doc in refused.items():
        assert routes._read(doc, joined=True) is None, why
    # A member we know is not held to this: it is one of ours (issue 13's rule, unchanged).
    assert routes._read(config_doc(me=None), joined=False) is not None

    seen = routes._read(config_doc(), joined=True)
    assert seen is not None
    listed, removed = seen
    assert d.table.vouch("--join", listed, removed, Dialer()) == [N5, N6]
    assert d._admits(N5) and d._admits(N6)
    assert not d._admits(NodeId("mallory"))  # nobody vouched for it


def test_only_a_restart_with_join_asks_the_join_url(tmp_path: Path) -> None:
    _, plain = restarted_node3(tmp_path, None)
    assert [joined for _, _, joined in plain._sources("http")] == [False, False]
    _, rejoin = restarted_node3(tmp_path, "http://127.0.0.5:8005")
    sources = rejoin._sources("http")
    assert sources[-1] == ("--join http://127.0.0.5:8005", "http://127.0.0.5:8005", True)


@asynccontextmanager
async def cluster_config(doc: dict[str, Any]) -> AsyncIterator[str]:
    """A server answering GET /cluster/config with `doc`; yields its base URL."""

    async def config(_request: web.Request) -> web.Response:
        return web.json_response(doc)

    async with config_server(config) as url:
        yield url


@asynccontextmanager
async def config_server(config: Handler) -> AsyncIterator[str]:
    """A server answering GET /cluster/config with `config`; yields its base URL."""
    app = web.Application()
    app.router.add_get("/cluster/config", config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def until(what: str, probe: Any, task: asyncio.Task[None]) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_S
    while not probe():
        assert not task.done() or task.exception() is None, task.exception()
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@aio
async def test_the_watch_admits_the_new_leader_named_by_the_join_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(members_routes, "REMOVAL_CHECK_S", 0.25)
    async with cluster_config(config_doc()) as url:
        d, routes = restarted_node3(tmp_path, url)
        assert not d._admits(N5)
        watch = asyncio.create_task(routes._watch_removal(None, None))
        try:
            await until("node-5 vouched for", lambda: d._admits(N5), watch)
        finally:
            watch.cancel()
        members = routes._m
        assert isinstance(members, Members)
        assert members.dialer.peers == {N5: ("127.0.0.5", 9005), N6: ("127.0.0.6", 9006)}
        assert not d._admits(NodeId("mallory"))


@aio
async def test_the_join_url_saying_this_node_was_removed_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(members_routes, "REMOVAL_CHECK_S", 0.25)
    async with cluster_config(config_doc(me=None, removed=("node-3",))) as url:
        d, routes = restarted_node3(tmp_path, url)
        members = routes._m
        assert isinstance(members, Members)
        watch = asyncio.create_task(routes._watch_removal(None, None))
        try:
            await until("the removal learned", lambda: members.removed_by is not None, watch)
        finally:
            watch.cancel()
        assert members.removed_by == f"--join {url}'s membership record"
        assert not d._admits(N5)  # a record that removed us vouches for nobody


def test_settings_keep_the_join_url_of_a_restart(tmp_path: Path) -> None:
    """`resolve()` on a restart from the member files with --join keeps the URL (with its
    scheme); without --join there is none."""
    settings = make_settings(tmp_path, "node-3")
    save_member_files(settings, ("node-1", "node-2", "node-3"))
    flags = {"node_id": "node-3", "data_dir": str(settings.data_dir.parent)}
    kw: dict[str, Any] = {"raft_address": None, "http_address": None, "env": {}}
    again = resolve(flags, join="127.0.0.5:8005/", **kw)
    assert again.settings.join_url == "http://127.0.0.5:8005" and not again.joined
    assert resolve(flags, join=None, **kw).settings.join_url is None
    assert (
        dataclasses.replace(again.settings, join_url=None)
        == resolve(flags, join=None, **kw).settings
    )


@aio
async def test_an_oversized_answer_vouches_for_nobody(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is untrusted: one over CONFIG_REPLY_MAX_BYTES is refused before decoding
    (here the cap is lowered below the size of an otherwise valid record)."""
    monkeypatch.setattr(members_routes, "REMOVAL_CHECK_S", 0.1)
    monkeypatch.setattr(members_routes, "CONFIG_REPLY_MAX_BYTES", 64)
    asked = 0

    async def config(_request: web.Request) -> web.StreamResponse:
        nonlocal asked
        asked += 1
        # Chunked (no Content-Length): the cap must hold on the bytes read, not the header.
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(_request)
        await resp.write(json.dumps(config_doc()).encode())
        await resp.write_eof()
        return resp

    async with config_server(config) as url:
        d, routes = restarted_node3(tmp_path, url)
        watch = asyncio.create_task(routes._watch_removal(None, None))
        try:
            await until("three answers read", lambda: asked >= 3, watch)
        finally:
            watch.cancel()
        assert not d._admits(N5)


def test_a_bare_join_address_on_an_https_cluster_means_https(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart's `--join host:port` on a cluster whose API is HTTPS is asked over https: a
    plaintext answer (anyone on the path) must not vouch for peers or stop the node."""
    settings = make_settings(tmp_path, "node-3")
    save_member_files(settings, ("node-1", "node-2", "node-3"))
    real = joining._from_member_files

    def with_https(*args: Any) -> Any:
        s, initial = real(*args)
        files = HttpTlsFiles(Path("c.crt"), Path("c.key"), None, None)
        return dataclasses.replace(s, tls_http=files), initial

    monkeypatch.setattr(joining, "_from_member_files", with_https)
    flags = {"node_id": "node-3", "data_dir": str(settings.data_dir.parent)}
    kw: dict[str, Any] = {"raft_address": None, "http_address": None, "env": {}}
    assert resolve(flags, join="127.0.0.5:8005", **kw).settings.join_url == "https://127.0.0.5:8005"
    # An explicit scheme is the operator's word.
    explicit = resolve(flags, join="http://127.0.0.5:8005", **kw).settings.join_url
    assert explicit == "http://127.0.0.5:8005"
