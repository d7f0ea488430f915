"""Space alarms on a running node: the leader keeps the replicated quota and the members' disk
alarms in step with what is configured and measured; every node reports and logs them.

Rules:
- The quota, the usage and the alarms are replicated state (kv/quota.py); this loop only
  proposes the entries that change them, and only on the node that believes it leads (they are
  ordinary commands: a stale leader's proposal fails to commit or changes nothing):
  * `SetQuota(storage.quota_bytes)` when the state's quota differs from the configured one, so
    the quota in force is the last leader's (configure every node alike) -- but a state without
    a quota gets one only once usage reaches half of it: until then it cannot matter, and a
    small cluster's log (and its revisions) never carry an entry it does not need;
  * `Alarm(member, True)` when a member reports less free disk than its
    `storage.min_free_bytes` (raised while there is still room, before the log or the state
    hits ENOSPC); `Alarm(member, False)` once it reports at least the margin plus a tenth
    (hysteresis), turns the margin off, or is no longer a member. A member that does not
    answer keeps its alarm as it is.
  A member reports its disk in `GET /cluster/local` (`disk_free_bytes`, `min_free_bytes`).
- The quota alarm needs no proposal: it is derived at apply time from usage and quota.
- Every node logs each alarm raised or cleared in its applied state, one line each.
- The loop never blocks or fails the server: errors are logged, and retried next period.
- Views for `/cluster/status`, `/ready` and the 507 reply read the local applied state.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

import structlog
from aiohttp import web

from raftkv.kv.quota import (
    DISK_CAUSE,
    NO_SPACE,
    QUOTA_CAUSE,
    Alarm,
    NoSpace,
    SetQuota,
    SpaceRecord,
)
from raftkv.runtime.api import ROLE_LEADER, FeatureNotEnabled, KVNode
from raftkv.server.background import running
from raftkv.server.errors import ApiError
from raftkv.server.forward import resolve_source_ip
from raftkv.server.status import StatusProbe

log = structlog.get_logger(__name__)

PERIOD_S: Final = 0.5


@runtime_checkable
class SpaceNode(Protocol):
    """A node that can report its applied space figures at once (no ReadIndex)."""

    def space(self) -> tuple[int, SpaceRecord]: ...


def free_bytes(path: Path) -> int | None:
    """Free bytes for an unprivileged writer on `path`'s filesystem (None if unknown); a path
    not created yet is measured at its nearest existing parent (the same filesystem)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def disk_low(raised: bool, free: int | None, margin: int) -> bool:
    """Should a member's disk alarm be raised, given what it reported (see the module rules)?"""
    if margin <= 0:
        return False
    if free is None:
        return raised
    if free < margin:
        return True
    return raised and free < margin + margin // 10


def quota_due(in_force: int, configured: int, used: int) -> bool:
    """Should the leader propose its configured quota (see the module rules)?"""
    if in_force == configured:
        return False
    return in_force != 0 or used * 2 >= configured


def alarms_json(rec: SpaceRecord) -> list[dict[str, str]]:
    out = [{"alarm": NO_SPACE, "cause": QUOTA_CAUSE}] if rec.quota_alarm else []
    out += [{"alarm": NO_SPACE, "cause": DISK_CAUSE, "member": m} for m in rec.disk]
    return out


def space_json(node: KVNode) -> dict[str, object] | None:
    """`{"usage_bytes", "quota_bytes", "alarms"}` of the local applied state, if available."""
    if not isinstance(node, SpaceNode):
        return None
    used, rec = node.space()
    return {"usage_bytes": used, "quota_bytes": rec.quota_bytes, "alarms": alarms_json(rec)}


def no_space_error(refused: NoSpace) -> ApiError:
    causes = ", ".join(
        "usage at the quota" if a == QUOTA_CAUSE else f"{a.split(':', 1)[1]}'s disk nearly full"
        for a in refused.alarms
    )
    return ApiError(
        507,
        NO_SPACE,
        f"the cluster is out of space ({causes}): writes that grow the data are refused; "
        "reads, deletes and compaction work, and the alarm clears by itself once usage is below "
        "90 % of the quota and every disk has room again",
        usage_bytes=refused.usage_bytes,
        quota_bytes=refused.quota_bytes,
        alarms=[
            {"alarm": NO_SPACE, "cause": QUOTA_CAUSE}
            if a == QUOTA_CAUSE
            else {"alarm": NO_SPACE, "cause": DISK_CAUSE, "member": a.split(":", 1)[1]}
            for a in refused.alarms
        ],
    )


class AlarmLoop:
    """The per-node loop of the module rules."""

    def __init__(
        self,
        node: KVNode,
        space: SpaceNode,
        *,
        quota_bytes: int,
        min_free_bytes: int,
        data_dir: Path,
        probe: StatusProbe,
    ) -> None:
        self._node = node
        self._space = space
        self._quota = quota_bytes
        self._margin = min_free_bytes
        self._data_dir = data_dir
        self._probe = probe
        self._seen: set[str] = set()  # alarms raised in the applied state at the last look

    async def run(self) -> None:
        while True:
            await asyncio.sleep(PERIOD_S)
            try:
                await self.once()
            except asyncio.CancelledError:
                raise
            except FeatureNotEnabled as exc:
                log.debug("space alarms wait for every member's upgrade", error=str(exc))
            except Exception as exc:  # retried next period; never takes the server down
                log.warning("space alarm check failed", error=repr(exc))

    async def once(self) -> None:
        used, rec = self._space.space()
        self._log_changes(used, rec)
        status = self._node.local_status()
        if status.role != ROLE_LEADER:
            return
        if quota_due(rec.quota_bytes, self._quota, used):
            await self._node.write(SetQuota(self._quota))
            log.info("space quota set", quota_bytes=self._quota, usage_bytes=used)
        for member, (raise_it, free) in sorted((await self._disk_reports(rec)).items()):
            await self._node.write(Alarm(member, raise_it, free or 0))

    async def _disk_reports(self, rec: SpaceRecord) -> dict[str, tuple[bool, int | None]]:
        """Member -> (raise?, free bytes) for each member whose disk alarm must change."""
        members = self._node.peer_http_addresses()
        own = self._node.node_id
        reports: dict[str, tuple[int | None, int]] = {
            own: (free_bytes(self._data_dir), self._margin)
        }
        others = {m: a for m, a in members.items() if m != own}
        for member, st in (await self._probe.fetch_all(others)).items():
            if st is not None:
                reports[member] = (st.disk_free_bytes, st.min_free_bytes)
        changes: dict[str, tuple[bool, int | None]] = {}
        for member in sorted(set(members) | {own}):
            if member not in reports:
                continue  # not answering: its alarm stays as it is
            free, margin = reports[member]
            raised = member in rec.disk
            if disk_low(raised, free, margin) != raised:
                changes[member] = (not raised, free)
        for member in rec.disk:
            if member not in members and member != own:
                changes[member] = (False, None)  # removed: nobody can clear it otherwise
        return changes

    def _log_changes(self, used: int, rec: SpaceRecord) -> None:
        now = set(rec.alarms())
        for alarm in sorted(now - self._seen):
            log.warning(
                "alarm raised: no_space",
                cause=alarm,
                usage_bytes=used,
                quota_bytes=rec.quota_bytes,
                hint="writes that grow the data get 507; delete keys or compact history "
                "(POST /compact), or free disk space",
            )
        for alarm in sorted(self._seen - now):
            log.info("alarm cleared: no_space", cause=alarm, usage_bytes=used)
        self._seen = now


def alarm_task(
    node: KVNode,
    *,
    quota_bytes: int,
    min_free_bytes: int,
    data_dir: Path,
    host: str,
    ssl_context: ssl.SSLContext | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup context running the loop (only for nodes that report space)."""

    async def ctx(_app: web.Application) -> AsyncIterator[None]:
        if not isinstance(node, SpaceNode):
            yield
            return
        probe = StatusProbe(source_ip=await resolve_source_ip(host), ssl_context=ssl_context)
        loop = AlarmLoop(
            node,
            node,
            quota_bytes=quota_bytes,
            min_free_bytes=min_free_bytes,
            data_dir=data_dir,
            probe=probe,
        )
        try:
            async with running(loop.run(), "space-alarms"):
                yield
        finally:
            await probe.close()

    return ctx


def disk_status(data_dir: Path, margin: int) -> Mapping[str, object]:
    """The disk fields `/cluster/local` adds to a node's own status."""
    return {"disk_free_bytes": free_bytes(data_dir), "min_free_bytes": margin}
