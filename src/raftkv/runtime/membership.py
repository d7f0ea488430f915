"""Membership operations on the leader: list, add (as a learner), promote, remove, transfer.

Rules:
- Every change is ONE single-server conf change (thesis §4.1), proposed on the leader and
  answered once it is applied here. The core refuses a second change while one is pending and
  any change before the leader committed an entry of its term (`ConfChangeRefused`); the first
  becomes `ChangeInProgress` (409), the second is waited out briefly (a new leader commits its
  no-op within a heartbeat or two).
- New members always join as learners: they replicate but never count toward a quorum, so a
  node that is added but never starts cannot cost the cluster its quorum (etcd's trap with
  `member add` of a voter). A learner is promoted only when caught up (`LearnerNotReady`
  otherwise, with its lag) and when the resulting voters still have a healthy quorum.
- "Healthy" is the leader's view: a peer from which a message arrived within
  `HEALTHY_ELECTIONS` election timeouts; the leader itself is healthy.
- A removal that leaves fewer healthy voters than a quorum of the new configuration is refused
  (`WouldLoseQuorum`). Removing the leader first transfers leadership (thesis §3.10) to the most
  up-to-date healthy voter, then reports `NotLeaderError` so the caller asks the new leader.
  Any other leader will do there (what is asked for is the removal, as in etcd and Consul,
  whose leaders remove themselves): a transfer may fail (§3.10) and an ordinary election elect
  another voter. Only if no other node leads in time is it `TransferFailed` (nothing changed;
  retry). An explicit transfer (`transfer`) succeeds only once its target leads.
- Removed ids are never reused (runtime/members.py): adding one is `MemberRemoved`; removing
  one again is answered as done (so clients may retry a removal whose reply was lost).
- Auto-promotion: while this node leads, learners whose record says `auto_promote` are
  promoted once ready (Consul autopilot's promotion, without a human step as in etcd).
- Everything runs on the event loop thread, like the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Final

import structlog

from raftkv.raft import quorum
from raftkv.raft.errors import ConfChangeRefused, NotLeader, ProposalDropped
from raftkv.raft.types import ConfChange, ConfChangeKind, NodeId, Role
from raftkv.runtime.api import NoLeaderError, NotLeaderError, OperationTimeout
from raftkv.runtime.driver import RaftDriver
from raftkv.runtime.members import ClusterRecord, MemberContext, MemberInfo, encode_context
from raftkv.runtime.waiters import ProposalLost

log = structlog.get_logger("raftkv.membership")

HEALTHY_ELECTIONS: Final = 3  # a peer heard from within this many election timeouts is healthy
PROMOTE_MAX_LAG: Final = 100  # a learner this close to the leader's last index is caught up
AUTO_PROMOTE_EVERY_TICKS: Final = 4


class MembershipError(Exception):
    """Base of the expected refusals; `code` is the API's stable error code."""

    code = "membership_error"

    def __init__(self, words: str, **context: object) -> None:
        super().__init__(words)
        self.context = context


class ChangeInProgress(MembershipError):
    code = "change_in_progress"


class DuplicateMember(MembershipError):
    code = "duplicate_member"


class MemberRemoved(MembershipError):
    code = "member_removed"


class UnknownMember(MembershipError):
    code = "member_not_found"


class LearnerNotReady(MembershipError):
    code = "learner_not_ready"


class WouldLoseQuorum(MembershipError):
    code = "would_lose_quorum"


class NotAVoter(MembershipError):
    code = "not_a_voter"


class TransferFailed(MembershipError):
    code = "transfer_failed"


@dataclass(frozen=True, slots=True)
class MemberView:
    id: str
    raft_address: str
    http_address: str
    role: str  # "voter" | "learner"
    match_index: int | None  # the leader's view; None when this node is not the leader
    healthy: bool | None  # the leader's view; None when this node is not the leader
    is_leader: bool

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "raft_address": self.raft_address,
            "http_address": self.http_address,
            "role": self.role,
            "match_index": self.match_index,
            "healthy": self.healthy,
            "is_leader": self.is_leader,
        }


class MembershipManager:
    def __init__(self, driver: RaftDriver, *, auto_promote: bool = True) -> None:
        self._driver = driver
        self.auto_promote = auto_promote
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._auto_promote_loop(), name="auto-promote")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def learned_removed(self, source: str) -> None:
        """Another member says this node was removed: stop (see RaftDriver.learned_removed)."""
        self._driver.learned_removed(source)

    def learned_members(
        self, source: str, members: dict[str, MemberInfo], removed: set[str]
    ) -> list[str]:
        """Another member's record lists `members`: admit and dial those ours does not know
        yet, so a leader added while we lagged can catch us up (runtime/member_table.py)."""
        d = self._driver
        return d.table.vouch(source, members, removed, d.transport)

    # -- views --------------------------------------------------------------------------------
    def record(self) -> ClusterRecord:
        """The replicated membership record as applied here."""
        return self._driver.table.record

    @property
    def _tick_s(self) -> float:
        return self._driver.opts.tick_ms / 1000.0

    def is_leader(self) -> bool:
        return self._driver.raw.raft.role is Role.LEADER

    def leader(self) -> tuple[str | None, str | None]:
        """The leader this node knows of and its HTTP address (from the member record)."""
        leader = self._driver.raw.leader
        if leader is None:
            return None, None
        return leader, self._driver.table.record.http_addresses().get(leader)

    def healthy(self, node: NodeId) -> bool:
        if node == self._driver.id:
            return True
        heard = self._driver.table.heard.get(node)
        window = HEALTHY_ELECTIONS * self._driver.opts.election_ticks * self._tick_s
        loop = asyncio.get_running_loop()
        return heard is not None and loop.time() - heard <= window

    def members(self) -> list[MemberView]:
        d = self._driver
        conf = d.raw.raft.conf
        leading = self.is_leader()
        progress = d.raw.raft.progress if leading else {}
        record = d.table.record.members
        out = []
        for node in conf.all_nodes():
            info = record.get(node)
            pr = progress.get(node)
            out.append(
                MemberView(
                    id=node,
                    raft_address=info.raft_address if info else "",
                    http_address=info.http_address if info else "",
                    role="voter" if node in conf.voters else "learner",
                    match_index=int(pr.match) if pr is not None else None,
                    healthy=self.healthy(node) if leading else None,
                    is_leader=node == d.raw.leader,
                )
            )
        return out

    def learner_lag(self, node: NodeId) -> int:
        """How many entries the leader has that `node` is not known to hold."""
        raft = self._driver.raw.raft
        pr = raft.progress.get(node)
        last = int(raft.log.last_index())
        return last if pr is None else max(0, last - int(pr.match))

    def learner_ready(self, node: NodeId) -> bool:
        raft = self._driver.raw.raft
        pr = raft.progress.get(node)
        return (
            pr is not None
            and pr.state.value == "replicate"
            and self.healthy(node)
            and self.learner_lag(node) <= PROMOTE_MAX_LAG
        )

    # -- changes (leader only; NotLeaderError elsewhere) ----------------------------------------
    def _require_leader(self) -> None:
        if not self.is_leader():
            leader, http = self.leader()
            if leader is None:
                raise NoLeaderError("no leader is known")
            raise NotLeaderError(leader, http)

    async def add(
        self, node_id: str, raft_address: str, http_address: str, *, auto_promote: bool | None
    ) -> MemberView:
        self._require_leader()
        record = self._driver.table.record
        if node_id in record.removed:
            raise MemberRemoved(
                f"{node_id} was removed from this cluster; ids are never reused: pick a new id",
                id=node_id,
            )
        for other, info in sorted(record.members.items()):
            if other == node_id:
                if (info.raft_address, info.http_address) == (raft_address, http_address):
                    return self._view(node_id)  # the same join asked again: already done
                raise DuplicateMember(f"{node_id} is already a member", field="id", id=node_id)
            for field, value, theirs in (
                ("raft_address", raft_address, info.raft_address),
                ("http_address", http_address, info.http_address),
            ):
                if value in (info.raft_address, info.http_address):
                    raise DuplicateMember(
                        f"{value} is already used by {other} ({theirs})",
                        field=field,
                        id=other,
                    )
        ctx = MemberContext(
            raft_address, http_address, self.auto_promote if auto_promote is None else auto_promote
        )
        cc = ConfChange(ConfChangeKind.ADD_LEARNER, NodeId(node_id), encode_context(ctx))
        await self._propose(cc)
        log.info("member added as learner", member=node_id, raft_address=raft_address)
        return self._view(node_id)

    async def promote(self, node_id: str) -> MemberView:
        self._require_leader()
        conf = self._driver.raw.raft.conf
        node = NodeId(node_id)
        if node in conf.voters:
            return self._view(node_id)
        if node not in conf.learners:
            raise UnknownMember(f"{node_id} is not a member", id=node_id)
        if not self.learner_ready(node):
            raft = self._driver.raw.raft
            pr = raft.progress.get(node)
            raise LearnerNotReady(
                f"{node_id} has not caught up yet; try again when it has",
                id=node_id,
                lag=self.learner_lag(node),
                match_index=int(pr.match) if pr else 0,
                leader_last_index=int(raft.log.last_index()),
                healthy=self.healthy(node),
            )
        await self._check_quorum_after((*conf.voters, node), "promoting")
        info = self._driver.table.record.members.get(node_id)
        ctx = encode_context(
            MemberContext(info.raft_address, info.http_address, info.auto_promote)
            if info
            else MemberContext()
        )
        await self._propose(ConfChange(ConfChangeKind.ADD_VOTER, node, ctx))
        log.info("learner promoted to voter", member=node_id)
        return self._view(node_id)

    async def remove(self, node_id: str) -> None:
        self._require_leader()
        d = self._driver
        conf = d.raw.raft.conf
        node = NodeId(node_id)
        if node_id in d.table.record.removed:
            return  # removed already: a repeated request is answered as done
        if node not in conf.all_nodes():
            raise UnknownMember(f"{node_id} is not a member", id=node_id)
        if node in conf.voters:
            rest = tuple(v for v in conf.voters if v != node)
            if not rest:
                raise WouldLoseQuorum(
                    "cannot remove the last voter", healthy_voters=1, quorum=1, voters=1
                )
            await self._check_quorum_after(rest, "removing")
        if node == d.id:
            await self._step_aside()  # raises NotLeaderError naming the new leader
        await self._propose(ConfChange(ConfChangeKind.REMOVE_NODE, node))
        log.info("member removed", member=node_id)

    async def transfer(self, to: str) -> str:
        """Make `to` the leader; returns once this node sees it lead."""
        self._require_leader()
        d = self._driver
        target = NodeId(to)
        if target == d.id:
            return to
        conf = d.raw.raft.conf
        if target not in conf.voters:
            raise NotAVoter(f"{to} is not a voter: only voters can lead", id=to)
        if not self.healthy(target):
            raise TransferFailed(f"{to} is not reachable from the leader", id=to)
        await self._transfer(target)
        return to

    # -- internals ----------------------------------------------------------------------------
    def _view(self, node_id: str) -> MemberView:
        for view in self.members():
            if view.id == node_id:
                return view
        raise UnknownMember(f"{node_id} is not a member", id=node_id)

    async def _check_quorum_after(self, voters: tuple[NodeId, ...], doing: str) -> None:
        """Refuse (`WouldLoseQuorum`) if `voters` would have fewer healthy members than a quorum.
        A leader that took over less than a health window ago has not yet heard from the nodes
        that were followers with it (followers talk only to their leader): it waits until the
        check passes or the window has passed (e.g. a removal handed over by the old leader)."""
        need = quorum.quorum_size(voters)
        window = HEALTHY_ELECTIONS * self._driver.opts.election_ticks * self._tick_s
        loop = asyncio.get_running_loop()
        while True:
            healthy = sum(1 for v in voters if self.healthy(v))
            if healthy >= need:
                return
            self._require_leader()  # deposed while waiting: the caller asks the new leader
            if loop.time() - self._driver.table.leading_since >= window:
                raise WouldLoseQuorum(
                    f"{doing} would leave {healthy} healthy voters of {len(voters)}; "
                    f"a quorum needs {need}",
                    healthy_voters=healthy,
                    quorum=need,
                    voters=len(voters),
                )
            await asyncio.sleep(self._tick_s)

    async def _propose(self, cc: ConfChange) -> None:
        d = self._driver
        loop = asyncio.get_running_loop()
        deadline = loop.time() + d.opts.request_timeout_s
        while True:
            try:
                term, index = d.raw.propose_conf_change(cc)
                break
            except NotLeader as exc:
                leader = exc.leader_hint
                http = d.table.record.http_addresses().get(leader) if leader else None
                if leader is None:
                    raise NoLeaderError("no leader is known") from None
                raise NotLeaderError(leader, http) from None
            except ConfChangeRefused as exc:
                if exc.reason == "pending":
                    raise ChangeInProgress(
                        "another membership change is in progress; retry when it is done"
                    ) from None
                if exc.reason == "invalid":
                    raise ChangeInProgress(str(exc)) from None
                # "term": a new leader commits its no-op within a round trip or two.
            except ProposalDropped:
                pass  # a leadership transfer is under way
            if loop.time() >= deadline:
                raise OperationTimeout("the leader could not accept the change in time")
            await asyncio.sleep(self._tick_s)
        fut = d.track(term, index)
        try:
            async with asyncio.timeout(max(0.001, deadline - loop.time())):
                await fut
        except TimeoutError:
            raise OperationTimeout(f"conf change at {index} not applied in time") from None
        except ProposalLost:
            raise NoLeaderError("leadership changed before the change committed; retry") from None

    async def _step_aside(self) -> None:
        d = self._driver
        raft = d.raw.raft
        conf = d.raw.raft.conf
        candidates = sorted(
            (int(raft.progress[v].match), v)
            for v in conf.voters
            if v != d.id and v in raft.progress and self.healthy(v)
        )
        if not candidates:
            raise WouldLoseQuorum("no healthy voter can take over the leadership")
        target = candidates[-1][1]
        log.info("removing the leader: transferring leadership first", to=target)
        await self._transfer(target, or_any_other=True)
        leader, http = self.leader()
        if leader != target:
            log.info("leadership went to another voter; the removal goes there", leader=leader)
        raise NotLeaderError(leader, http)

    async def _transfer(self, target: NodeId, *, or_any_other: bool = False) -> None:
        """Wait until `target` leads (or, with `or_any_other`, any node but us), asking for the
        transfer again whenever we lead with none under way (one fails after an election
        timeout); `TransferFailed` at the deadline."""
        d = self._driver
        loop = asyncio.get_running_loop()
        election_s = d.opts.election_ticks * self._tick_s
        deadline = loop.time() + 4 * election_s + 1.0
        while loop.time() < deadline:
            leader = d.raw.leader
            if leader == target or (or_any_other and leader is not None and leader != d.id):
                return
            if d.raw.raft.role is Role.LEADER and d.raw.raft.lead_transferee is None:
                d.raw.transfer_leader(target)  # retried after a failed attempt (one timeout)
                d.poke()
            await asyncio.sleep(self._tick_s)
        raise TransferFailed(
            f"{target} did not take over the leadership in time", id=target, leader=d.raw.leader
        )

    async def _auto_promote_loop(self) -> None:
        while True:
            await asyncio.sleep(AUTO_PROMOTE_EVERY_TICKS * self._tick_s)
            if not self.is_leader():
                continue
            conf = self._driver.raw.raft.conf
            record = self._driver.table.record.members
            for node in conf.learners:
                info = record.get(node)
                if info is None or not info.auto_promote or not self.learner_ready(node):
                    continue
                try:
                    await self.promote(node)
                except (MembershipError, NotLeaderError, NoLeaderError, OperationTimeout) as exc:
                    log.info("auto-promotion deferred", member=node, reason=str(exc))
                except Exception:
                    log.exception("auto-promotion failed", member=node)
                break  # one change at a time
