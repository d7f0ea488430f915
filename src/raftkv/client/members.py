"""Calls of the membership API (`/cluster/members`, `/cluster/leader`), for `Client.call`.

Rules: each builder returns one `protocol.Call` whose reply is the server's JSON document (a
dict). Kinds follow what a repeated request does: listing is a READ; the changes are
IDEMPOTENT -- the server answers a repeated add (same id and addresses), promote, remove (of an
id already removed) or transfer as done -- so the engine may re-send one whose reply was lost.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import msgspec

from raftkv.client.protocol import JSON, Call, Kind
from raftkv.client.wire import Reply

Doc = dict[str, Any]


def _doc(reply: Reply) -> Doc:
    doc = msgspec.json.decode(reply.body)
    return doc if isinstance(doc, dict) else {"result": doc}


def _json_call(method: str, target: str, kind: Kind, body: Doc | None, name: str) -> Call[Doc]:
    return Call(
        method,
        target,
        kind,
        _doc,
        body=msgspec.json.encode(body) if body is not None else b"",
        headers=(("Content-Type", JSON),) if body is not None else (),
        name=name,
    )


def list_members() -> Call[Doc]:
    return _json_call("GET", "/cluster/members", Kind.READ, None, "member list")


def add_member(
    node_id: str, raft_address: str, http_address: str, *, auto_promote: bool | None = None
) -> Call[Doc]:
    body: Doc = {
        "id": node_id,
        "raft_address": raft_address,
        "http_address": http_address,
        "learner": True,
    }
    if auto_promote is not None:
        body["auto_promote"] = auto_promote
    return _json_call("POST", "/cluster/members", Kind.IDEMPOTENT, body, "member add")


def promote_member(node_id: str) -> Call[Doc]:
    target = f"/cluster/members/{quote(node_id, safe='')}/promote"
    return _json_call("POST", target, Kind.IDEMPOTENT, None, "member promote")


def remove_member(node_id: str) -> Call[Doc]:
    target = f"/cluster/members/{quote(node_id, safe='')}"
    return _json_call("DELETE", target, Kind.IDEMPOTENT, None, "member remove")


def transfer_leader(to: str) -> Call[Doc]:
    return _json_call("POST", "/cluster/leader", Kind.IDEMPOTENT, {"to": to}, "leader transfer")
