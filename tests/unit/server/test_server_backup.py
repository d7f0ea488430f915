"""GET /cluster/snapshot's refusals, each a JSON error (the happy path runs on real nodes in
tests/integration/test_backup_restore.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from raftkv.runtime.api import NodeStopping, NoLeaderError, OperationTimeout
from raftkv.runtime.backup import Backup, BackupBusy
from tests.unit.server.fakes import FakeNode, aio, client_for, make_settings


class FailingBackups:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    @asynccontextmanager
    async def make(self) -> AsyncIterator[Backup]:
        raise self.exc
        yield  # pragma: no cover - makes this a generator


class BackupNode(FakeNode):
    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self._backups = FailingBackups(exc)

    def backups(self) -> FailingBackups:
        return self._backups


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (BackupBusy("busy"), 409, "backup_in_progress"),
        (NoLeaderError("none"), 503, "no_leader"),
        (OperationTimeout("slow"), 504, "timeout"),
        (NodeStopping("bye"), 503, "node_stopping"),
        (OSError(28, "No space left on device"), 503, "backup_failed"),
    ],
)
@aio
async def test_refusals_are_json(
    tmp_path: Path, exc: BaseException, status: int, code: str
) -> None:
    async with client_for(BackupNode(exc), make_settings(tmp_path)) as client:
        resp = await client.get("/cluster/snapshot")
        assert resp.status == status
        body = await resp.json()
        assert body["code"] == code and body["error"]


@aio
async def test_a_node_without_backups_says_so(tmp_path: Path) -> None:
    async with client_for(FakeNode(), make_settings(tmp_path)) as client:
        resp = await client.get("/cluster/snapshot")
        assert resp.status == 501
        assert (await resp.json())["code"] == "not_supported"
