"""No route returns data from a node that refuses reads (runtime/halt.py `check_readable`): after
a storage failure, every route that reads key-value data or auth records answers what a KV
read answers, 503 `node_stopping`; the routes that report the failure keep answering.

One in-process node (RaftKVNode, LMDB) served by the real app; the failure is an EIO on the
log's save (as test_reads_after_failure.py). Route families: auth (listings, a user, a role,
tokens, authenticating a request with Basic or Bearer), KV single keys and ranges, read-only
transactions, the inspector's /debug routes and backups (/cluster/snapshot, also cut short
when the failure comes while it streams).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from raftkv.runtime.api import NodeStopping, OperationTimeout
from raftkv.runtime.backup import Backup
from raftkv.runtime.node import RaftKVNode
from tests.unit.runtime.test_driver_storage import eio, started
from tests.unit.server.fakes import Client, FakeNode, aio, client_for, make_settings

ROOT_PASSWORD = "rootpw"
ROOT = {"Authorization": "Basic " + base64.b64encode(f"root:{ROOT_PASSWORD}".encode()).decode()}
READ_ONLY_TXN = {"compare": [], "success": [{"op": "get", "key": "warm"}]}

# (method, path, request kwargs): each returns key-value data or auth records when it works.
DATA_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/kv/warm?consistency=stale", {}),
    ("GET", "/kv/warm", {}),
    ("GET", "/kv?prefix=&consistency=stale", {}),
    ("POST", "/txn", {"json": READ_ONLY_TXN}),
    ("GET", "/debug/keys", {}),
    ("GET", "/debug/log", {}),
    ("GET", "/cluster/snapshot", {}),
    ("GET", "/auth/users", {}),
    ("GET", "/auth/users/root", {}),
    ("GET", "/auth/roles", {}),
    ("GET", "/auth/roles/root", {}),
    ("POST", "/auth/token", {"json": {"name": "root", "password": ROOT_PASSWORD}}),
]


async def _code(resp: aiohttp.ClientResponse) -> tuple[int, str | None]:
    body = await resp.json()
    return resp.status, body.get("code")


async def _fail(node: RaftKVNode) -> None:
    """A storage failure: the next log save raises EIO; the write that hits it fails."""
    node.driver.durable.save = eio  # type: ignore[method-assign]
    with pytest.raises(OperationTimeout):
        await node.put("k", "v")
    assert node.driver.failed and not node.serves_reads()


@asynccontextmanager
async def _served(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[RaftKVNode, Client]]:
    node = await started(tmp_path)
    try:
        async with client_for(node, make_settings(tmp_path, **settings)) as client:  # type: ignore[arg-type]
            yield node, client
    finally:
        await node.stop()
        node.driver.sm.close()  # stop() closes nothing after a failure (test_driver_storage.py)


async def _status_routes_still_answer(client: Client, headers: dict[str, str]) -> None:
    """The routes an operator sees the failure through (open with auth on, too)."""
    for path in ("/health", "/cluster/local", "/metrics"):
        resp = await client.get(path, headers=headers)
        assert resp.status == 200, path
    resp = await client.get("/ready", headers=headers)
    assert await _code(resp) == (503, "not_ready")


@aio
async def test_auth_off_no_data_route_answers_after_a_storage_failure(tmp_path: Path) -> None:
    async with _served(tmp_path) as (node, client):
        before = {}
        for method, path, kw in DATA_ROUTES:
            if path == "/auth/token":
                continue  # no signing key without auth on: 503 auth_not_ready either way
            resp = await client.request(method, path, **kw)
            before[path] = resp.status
            await resp.read()
        # Each route answered from this node's state before the failure (a 404 too: no user
        # root without auth on says what the state holds).
        assert set(before.values()) == {200, 404}, before
        assert before["/auth/users/root"] == 404

        await _fail(node)
        for method, path, kw in DATA_ROUTES:
            resp = await client.request(method, path, **kw)
            assert await _code(resp) == (503, "node_stopping"), (method, path)
            assert resp.headers["Retry-After"] == "1"
        await _status_routes_still_answer(client, {})


@aio
async def test_auth_on_a_failed_node_authenticates_nobody_and_lists_nothing(
    tmp_path: Path,
) -> None:
    async with _served(tmp_path, auth_enabled=True, root_password=ROOT_PASSWORD) as (
        node,
        client,
    ):
        # The leader (this node) bootstraps root and the signing key through the log.
        resp = await client.post("/auth/token", headers=ROOT)
        while resp.status != 200:
            await resp.read()
            resp = await client.post("/auth/token", headers=ROOT)
        bearer = {"Authorization": f"Bearer {(await resp.json())['token']}"}
        for creds in (ROOT, bearer):
            assert (await client.get("/auth/whoami", headers=creds)).status == 200
            assert (await client.get("/auth/users", headers=creds)).status == 200

        await _fail(node)
        for creds in (ROOT, bearer):
            # Authenticating reads the user's record: refused as the read it is.
            for method, path, kw in [*DATA_ROUTES, ("GET", "/auth/whoami", {})]:
                resp = await client.request(method, path, headers=creds, **kw)
                assert await _code(resp) == (503, "node_stopping"), (method, path, creds)
        # No credentials: 401 as before (no record is read to say so); the open routes answer.
        resp = await client.get("/auth/users")
        assert await _code(resp) == (401, "unauthenticated")
        await _status_routes_still_answer(client, {})


class _BackupAbortedMidway:
    """Backups whose node starts refusing reads once the first chunk is out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.checks = 0

    @asynccontextmanager
    async def make(self) -> AsyncIterator[Backup]:
        yield Backup(self.path, "node-1", 7, 1, self.path.stat().st_size, "0" * 64)

    def check_readable(self) -> None:
        self.checks += 1
        if self.checks > 1:
            raise NodeStopping("node is shutting down")


class _BackupNode(FakeNode):
    def __init__(self, backups: _BackupAbortedMidway) -> None:
        super().__init__()
        self._backups = backups

    def backups(self) -> _BackupAbortedMidway:
        return self._backups


@aio
async def test_a_backup_streaming_when_the_node_fails_is_cut_short(tmp_path: Path) -> None:
    snap = tmp_path / "backup.snap"
    snap.write_bytes(b"s" * (3 << 20))  # three chunks
    backups = _BackupAbortedMidway(snap)
    async with client_for(_BackupNode(backups), make_settings(tmp_path)) as client:
        resp = await client.get("/cluster/snapshot")
        assert resp.status == 200  # the status line went out before the failure
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert backups.checks == 2  # no chunk after the refusal
