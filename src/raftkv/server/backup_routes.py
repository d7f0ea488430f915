"""`GET /cluster/snapshot`: a consistent snapshot of this node's state, streamed (backups).

Reply: 200 with the snapshot file (`application/octet-stream`, the format of
`storage/snapshot_file.py`) and headers:
    X-Raftkv-Snapshot-Index    the last log index the snapshot reflects
    X-Raftkv-Snapshot-Term     that entry's term
    X-Raftkv-Snapshot-Sha256   hex SHA-256 of the body
    X-Raftkv-Node-Id           the node that made it
    Content-Length

Rules:
- Linearizable: the node runs a ReadIndex barrier before building the file, so every write
  acknowledged before the request is in it (runtime/backup.py). Any node can answer;
  `raftkv snapshot save` asks the leader.
- One backup at a time per node: 409 `backup_in_progress`. No leader: 503 `no_leader`; the
  barrier timing out: 504 `timeout`; the node stopping: 503 `node_stopping`; the file could not
  be written (disk full...): 503 `backup_failed` naming why. Nothing answers 500.
- The body is read from disk in a worker thread, 1 MiB at a time; the file is removed when the
  reply ends, complete or not.
- A node that refuses reads (halted, failed after a storage failure, stopping) makes no backup:
  503 `node_halted` / `node_stopping` as its KV reads; if it starts refusing while the body
  streams, the connection is aborted before the next chunk (the body is short: the receiver's
  length and SHA-256 checks drop it; runtime/backup.py).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import BinaryIO, Final, Protocol, runtime_checkable

from aiohttp import web

from raftkv.runtime.api import NodeHalted, NodeStopping, NoLeaderError, OperationTimeout
from raftkv.runtime.backup import Backup, BackupBusy, Backups
from raftkv.server.errors import ApiError

CHUNK: Final = 1 << 20
INDEX_HEADER: Final = "X-Raftkv-Snapshot-Index"
TERM_HEADER: Final = "X-Raftkv-Snapshot-Term"
SHA256_HEADER: Final = "X-Raftkv-Snapshot-Sha256"
NODE_HEADER: Final = "X-Raftkv-Node-Id"


@runtime_checkable
class Backupable(Protocol):
    def backups(self) -> Backups: ...


def add_backup_routes(app: web.Application, node: object) -> None:
    backups = node.backups() if isinstance(node, Backupable) else None
    app.router.add_get("/cluster/snapshot", _BackupRoute(backups).get)


class _BackupRoute:
    def __init__(self, backups: Backups | None) -> None:
        self._backups = backups

    async def get(self, request: web.Request) -> web.StreamResponse:
        if self._backups is None:
            raise ApiError(501, "not_supported", "this node cannot make backups")
        async with AsyncExitStack() as stack:
            backup = await _make(stack, self._backups)
            resp = web.StreamResponse(
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(backup.size),
                    "Content-Disposition": f'attachment; filename="raftkv-{backup.index}.snap"',
                    INDEX_HEADER: str(backup.index),
                    TERM_HEADER: str(backup.term),
                    SHA256_HEADER: backup.sha256,
                    NODE_HEADER: backup.node_id,
                }
            )
            # From here on the status line is out: a failure can only cut the body short,
            # which the receiver detects (Content-Length, SHA-256).
            await resp.prepare(request)
            with open(backup.path, "rb") as f:
                while chunk := await asyncio.to_thread(_read, f):
                    if not _still_readable(self._backups, request):
                        return resp  # aborted: nothing more goes out
                    await resp.write(chunk)
            await resp.write_eof()
            return resp


async def _make(stack: AsyncExitStack, backups: Backups) -> Backup:
    """Enter `backups.make()` on `stack`, its failures turned into API errors."""
    try:
        return await stack.enter_async_context(backups.make())
    except BackupBusy as exc:
        raise ApiError(409, "backup_in_progress", str(exc)) from exc
    except NoLeaderError as exc:
        raise ApiError(
            503,
            "no_leader",
            "no leader to confirm the backup's read; retry later",
            headers={"Retry-After": "1"},
        ) from exc
    except OperationTimeout as exc:
        raise ApiError(504, "timeout", "the backup's read barrier timed out") from exc
    except NodeStopping as exc:
        raise ApiError(
            503, "node_stopping", "the node is shutting down", headers={"Retry-After": "1"}
        ) from exc
    except OSError as exc:
        raise ApiError(
            503, "backup_failed", "the snapshot file could not be written", reason=str(exc)
        ) from exc


def _still_readable(backups: Backups, request: web.Request) -> bool:
    """False, with the connection aborted, once the node refuses reads (module rules): the
    status line is out, so a short body is the only refusal left."""
    try:
        backups.check_readable()
    except (NodeHalted, NodeStopping):
        if request.transport is not None:
            request.transport.abort()
        return False
    return True


def _read(f: BinaryIO) -> bytes:
    return f.read(CHUNK)
