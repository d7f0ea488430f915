"""The membership API: /cluster/members, /cluster/leader, /cluster/config.

Routes:
    GET    /cluster/members                 {"members": [...], "leader"}   (the leader's view)
    POST   /cluster/members                 {"id", "raft_address", "http_address",
                                             "learner": true, "auto_promote"?} -> 201
    POST   /cluster/members/{id}/promote    -> 200 (409 learner_not_ready with its lag)
    DELETE /cluster/members/{id}            -> 200 (409 would_lose_quorum)
    POST   /cluster/leader                  {"to": id} -> 200 once `to` leads
    GET    /cluster/config                  what a joining node copies: the shared sections of
                                            the configuration, the initial voters, the members
                                            and the removed ids

Rules:
- Changes run on the leader (runtime/membership.py); a follower forwards them once, like writes
  (`forward.py`: at most once, never re-forwarded). GET /cluster/members is forwarded too, so
  `match_index` and `healthy` are the leader's view; without a leader it answers its own view
  with those fields null.
- Removing the leader: the leader hands leadership over first, then forwards the request to the
  new leader itself (one more hop, even for a forwarded request: the handover is what moved it).
- A removed node may never hear of its own removal (the leader stops replicating to it once the
  change applies, and the others drop its messages): while it knows no leader it asks the
  others' `/cluster/config` every `REMOVAL_CHECK_S`; one listing it as removed makes it stop.
  The same answers name the members ours lacks: a node that was down while a member joined
  does not know that member, so could neither admit nor answer it once it leads; it takes
  them from there (`learned_members`, runtime/member_table.py) and is caught up.
- A restart named with `--join URL` (`Settings.join_url`) asks that URL too: every member the
  node knows may have been removed (and stopped) while it was down, leaving nobody to vouch for
  the new ones. The URL is a source the operator configured, not a member we know, so its
  answer counts only when it is our cluster's record and lists this node -- as removed, or as a
  member at this node's own Raft address (`join_vouches`); the ids and addresses it vouches for
  are checked like any other (`_members_of`, `MemberTable.vouch`).
- Every refusal is a JSON error with a stable code (runtime/membership.py lists them); 400 for a
  malformed body, an id that does not fit node-id rules, or an address that is not host:port.
- GET /cluster/members and /cluster/config keep answering on a node that refuses reads
  (halted, failed after a storage failure: runtime/halt.py): ids, addresses and the shared
  config, no key, value or auth record; the record is applied, hence committed, history; the
  others' removal watch and a joining node read it, and an operator sees the cluster through
  it.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from ssl import SSLContext
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web

from raftkv.runtime.api import NodeStopping, NoLeaderError, NotLeaderError, OperationTimeout
from raftkv.runtime.members import MemberInfo
from raftkv.runtime.membership import (
    ChangeInProgress,
    LearnerNotReady,
    MembershipError,
    MembershipManager,
    NotAVoter,
    TransferFailed,
    UnknownMember,
    WouldLoseQuorum,
)
from raftkv.server.background import running
from raftkv.server.config import Address, ConfigError, Settings
from raftkv.server.errors import ApiError, json_response
from raftkv.server.forward import (
    FORWARDED_HEADER,
    Forwarder,
    make_connector,
    resolve_source_ip,
)
from raftkv.server.joining import shared_config
from raftkv.server.tls import node_client_context

log = structlog.get_logger(__name__)

NODE_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_BODY_BYTES: Final = 16 << 10
REMOVAL_CHECK_S: Final = 1.0
_STATUS: Final[dict[type[MembershipError], int]] = {
    ChangeInProgress: 409,
    LearnerNotReady: 409,
    WouldLoseQuorum: 409,
    UnknownMember: 404,
    NotAVoter: 400,
    TransferFailed: 503,
}


def add_member_routes(
    app: web.Application, membership: MembershipManager, settings: Settings
) -> None:
    routes = _MemberRoutes(membership, settings)
    app.cleanup_ctx.append(routes.client_session)
    app.router.add_get("/cluster/members", routes.list)
    app.router.add_post("/cluster/members", routes.add)
    app.router.add_post("/cluster/members/{id}/promote", routes.promote)
    app.router.add_delete("/cluster/members/{id}", routes.remove)
    app.router.add_post("/cluster/leader", routes.transfer)
    app.router.add_get("/cluster/config", routes.config)


CONFIG_REPLY_MAX_BYTES: Final = 1 << 20  # a membership record is a few KiB; a peer's answer
# (or the --join URL's) is untrusted: a bigger one is refused before it is decoded.


async def _bounded_json(resp: aiohttp.ClientResponse) -> Any:
    """The JSON body of a 200 reply of at most CONFIG_REPLY_MAX_BYTES; {} for anything else."""
    if resp.status != 200:
        return {}
    if (resp.content_length or 0) > CONFIG_REPLY_MAX_BYTES:
        return {}
    body = await resp.content.read(CONFIG_REPLY_MAX_BYTES + 1)
    if len(body) > CONFIG_REPLY_MAX_BYTES:
        return {}
    return json.loads(body)


class _MemberRoutes:
    def __init__(self, membership: MembershipManager, settings: Settings) -> None:
        self._m = membership
        self._settings = settings
        self._forwarder: Forwarder | None = None

    async def client_session(self, _app: web.Application) -> AsyncIterator[None]:
        timeout_s = self._settings.request_timeout_ms / 1000
        source_ip = await resolve_source_ip(self._settings.http_address.host)
        ssl_context = node_client_context(self._settings)
        self._forwarder = Forwarder(
            str(self._settings.node_id),
            source_ip=source_ip,
            ssl_context=ssl_context,
            connect_timeout_s=min(1.0, timeout_s / 2),
            # A removal of the leader may wait for a handover before its own proposal.
            total_timeout_s=2 * timeout_s + 2.0,
        )
        try:
            async with running(self._watch_removal(source_ip, ssl_context), "removal-watch"):
                yield
        finally:
            await self._forwarder.close()
            self._forwarder = None

    async def _watch_removal(self, source_ip: str | None, ssl_context: SSLContext | None) -> None:
        scheme = "https" if ssl_context is not None else "http"
        async with aiohttp.ClientSession(
            connector=make_connector(source_ip, force_close=False, ssl_context=ssl_context),
            timeout=aiohttp.ClientTimeout(total=REMOVAL_CHECK_S),
            trust_env=False,
        ) as session:
            while True:
                await asyncio.sleep(REMOVAL_CHECK_S)
                if self._m.leader()[0] is not None:
                    continue
                for source, url, joined in self._sources(scheme):
                    try:
                        async with session.get(f"{url}/cluster/config") as resp:
                            doc = await _bounded_json(resp)
                    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                        continue
                    seen = self._read(doc, joined)
                    if seen is None:
                        continue
                    listed, removed = seen
                    if str(self._settings.node_id) in removed:
                        self._m.learned_removed(f"{source}'s membership record")
                        return
                    if listed:
                        self._m.learned_members(f"{source}'s membership record", listed, removed)

    def _sources(self, scheme: str) -> list[tuple[str, str, bool]]:
        """Whom the watch asks: (name, base URL, is it the --join URL). The members our record
        knows, then the --join URL a restart named: its members may all be gone."""
        me = str(self._settings.node_id)
        found = [
            (peer, f"{scheme}://{http}", False)
            for peer, http in sorted(self._m.record().http_addresses().items())
            if peer != me and http
        ]
        if self._settings.join_url is not None:
            found.append((f"--join {self._settings.join_url}", self._settings.join_url, True))
        return found

    def _read(self, doc: object, joined: bool) -> tuple[dict[str, MemberInfo], set[str]] | None:
        """The members and removed ids of a /cluster/config answer; None if it is malformed or,
        from the --join URL, not the record of OUR cluster (`join_vouches`)."""
        if not isinstance(doc, dict):
            return None
        removed = doc.get("removed")
        removed = {str(r) for r in removed} if isinstance(removed, list) else set()
        listed = _members_of(doc.get("members"))
        if joined and not join_vouches(doc, self._settings, listed, removed):
            return None
        return listed, removed

    # -- handlers ---------------------------------------------------------------------------
    async def list(self, request: web.Request) -> web.StreamResponse:
        leader, http = self._m.leader()
        if (
            not self._m.is_leader()
            and leader is not None
            and http
            and FORWARDED_HEADER not in request.headers
            and self._forwarder is not None
        ):
            try:
                return await self._forwarder.forward(request, b"", leader, http)
            except ApiError:
                pass  # the leader is unreachable: answer our own view
        return json_response(self._members_json())

    async def add(self, request: web.Request) -> web.StreamResponse:
        body, raw = await _json_body(request)
        node_id = _node_id(body.get("id"), "id")
        raft_address = _address(body.get("raft_address"), "raft_address")
        http_address = _address(body.get("http_address"), "http_address")
        learner = body.get("learner", True)
        if learner is not True:
            raise ApiError(
                400,
                "learner_required",
                "new members always join as learners and are promoted once caught up "
                '(set "learner": true, and "auto_promote": false to keep one a learner)',
            )
        auto = body.get("auto_promote")
        if auto is not None and not isinstance(auto, bool):
            raise ApiError(400, "invalid_body", "auto_promote must be true or false")
        view = await self._run(
            request,
            raw,
            self._m.add(node_id, raft_address, http_address, auto_promote=auto),
        )
        if isinstance(view, web.StreamResponse):
            return view
        return json_response({"member": view.to_json(), **self._members_json()}, status=201)

    async def promote(self, request: web.Request) -> web.StreamResponse:
        node_id = _node_id(request.match_info["id"], "id")
        view = await self._run(request, b"", self._m.promote(node_id))
        if isinstance(view, web.StreamResponse):
            return view
        return json_response({"member": view.to_json(), **self._members_json()})

    async def remove(self, request: web.Request) -> web.StreamResponse:
        node_id = _node_id(request.match_info["id"], "id")
        done = await self._run(request, b"", self._m.remove(node_id), after_handover=True)
        if isinstance(done, web.StreamResponse):
            return done
        return json_response({"removed": node_id, **self._members_json()})

    async def transfer(self, request: web.Request) -> web.StreamResponse:
        body, raw = await _json_body(request)
        to = _node_id(body.get("to"), "to")
        leader = await self._run(request, raw, self._m.transfer(to))
        if isinstance(leader, web.StreamResponse):
            return leader
        return json_response({"leader": leader, "message": f"{leader} is the leader"})

    async def config(self, request: web.Request) -> web.StreamResponse:
        record = self._m.record()
        return json_response(
            {
                "config": shared_config(self._settings),
                "initial_voters": list(record.initial),
                "removed": list(record.removed),
                "members": {
                    n: {"raft_address": m.raft_address, "http_address": m.http_address}
                    for n, m in sorted(record.members.items())
                },
            }
        )

    # -- helpers ----------------------------------------------------------------------------
    def _members_json(self) -> dict[str, object]:
        leader, _ = self._m.leader()
        return {
            "members": [v.to_json() for v in self._m.members()],
            "leader": leader,
            "view": "leader" if self._m.is_leader() else "local",
        }

    async def _run(
        self,
        request: web.Request,
        raw: bytes,
        operation: Any,
        *,
        after_handover: bool = False,
    ) -> Any:
        """Run a change here if we lead, else forward it; map refusals to JSON errors."""
        try:
            return await operation
        except NotLeaderError as exc:
            return await self._forward(request, raw, exc, handed_over=after_handover)
        except MembershipError as exc:
            # A failed transfer changed nothing and may work next time: say when to retry.
            retry = {"Retry-After": "1"} if isinstance(exc, TransferFailed) else None
            err = ApiError(_STATUS.get(type(exc), 400), exc.code, str(exc), headers=retry)
            err.context = dict(exc.context)
            raise err from exc
        except NoLeaderError as exc:
            raise ApiError(
                503, "no_leader", str(exc) or "no leader is known", headers={"Retry-After": "1"}
            ) from exc
        except (OperationTimeout, TimeoutError) as exc:
            raise ApiError(
                504, "timeout", f"the change did not complete in time: {exc}; check the members"
            ) from exc
        except NodeStopping as exc:
            raise ApiError(503, "node_stopping", "the node is shutting down") from exc

    async def _forward(
        self,
        request: web.Request,
        raw: bytes,
        exc: NotLeaderError,
        *,
        handed_over: bool,
    ) -> web.StreamResponse:
        forwarded = FORWARDED_HEADER in request.headers
        was_leader_here = handed_over and exc.leader_id != self._settings.node_id
        if (forwarded and not was_leader_here) or exc.leader_id is None or not exc.leader_http:
            raise ApiError(
                503,
                "not_leader",
                "this node is not the leader; retry",
                headers={"Retry-After": "1"},
                leader=exc.leader_id,
                leader_http=exc.leader_http,
            )
        if self._forwarder is None:
            raise ApiError(503, "node_stopping", "the node is shutting down")
        return await self._forwarder.forward(request, raw, exc.leader_id, exc.leader_http)


async def _json_body(request: web.Request) -> tuple[dict[str, Any], bytes]:
    # The server's body gate has read (and cached) the body already; read() returns it.
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "request_too_large", "request body too large")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "body must be a JSON object")
    return body, raw


def join_vouches(
    doc: dict[str, Any], settings: Settings, listed: dict[str, MemberInfo], removed: set[str]
) -> bool:
    """May the --join URL's answer `doc` vouch for members (or say we were removed)? The
    operator named that URL, but it is not a member we know: only if it is our cluster's
    record -- the same cluster name -- and it lists this node as removed, or as a member at
    this node's own Raft address (the record the leader replicating to us holds)."""
    config = doc.get("config")
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or cluster.get("name") != settings.cluster_name:
        return False
    me = str(settings.node_id)
    if me in removed:
        return True
    mine = listed.get(me)
    return mine is not None and mine.raft_address == str(settings.raft_address)


def _members_of(value: object) -> dict[str, MemberInfo]:
    """The `members` of a peer's /cluster/config answer; malformed entries are skipped."""
    if not isinstance(value, dict):
        return {}
    found = {}
    for node, info in value.items():
        if not (isinstance(node, str) and NODE_ID_RE.fullmatch(node) and isinstance(info, dict)):
            continue
        raft, http = info.get("raft_address"), info.get("http_address")
        if isinstance(raft, str) and isinstance(http, str):
            try:
                Address.parse(raft, "raft_address")
            except ConfigError:
                continue
            found[node] = MemberInfo(raft, http)
    return found


def _node_id(value: object, field: str) -> str:
    if not isinstance(value, str) or not NODE_ID_RE.fullmatch(value):
        raise ApiError(
            400,
            "invalid_node_id",
            f"{field} must be letters, digits, '.', '_' or '-' (at most 63)",
            field=field,
        )
    return value


def _address(value: object, field: str) -> str:
    try:
        return str(Address.parse(value, field))
    except ConfigError as exc:
        raise ApiError(400, "invalid_address", str(exc), field=field) from exc
