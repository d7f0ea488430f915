"""Request parameters and reply shapes of the data-model API (revisions, CAS, ranges, sessions).

Rules:
- Query parameters and headers are parsed strictly: a malformed number, an unknown consistency
  or an unsupported precondition is a 400 with its own code, never ignored.
- A value is text (str) or binary (bytes). In JSON replies text values are as the seed shows
  them; a binary value is base64 with `"value_encoding": "base64"` next to it.
- `If-Match: "<mod_revision>"` (quotes optional, or `*`: the key exists) and
  `If-None-Match: *` (the key is absent) become transaction compares; a comma list of
  revisions in If-Match is refused (400) rather than half-supported.
- Session headers: `Raftkv-Session` (id), `Raftkv-Seq` (>= 1), `Raftkv-Ack` (>= 0, optional);
  a session without a seq is a 400.
- `revision` reads: below the compact revision -> 410 `compacted` with `compact_revision`;
  above the store's revision -> 400 `future_revision` with `revision`.
"""

from __future__ import annotations

import base64
from typing import Final

from aiohttp import web

from raftkv.kv.commands import Compare, CompareOp, KeyValue, Target, Value
from raftkv.kv.mvcc import MVCCStore
from raftkv.server.errors import ApiError

CONSISTENCY_LEVELS: Final = ("linearizable", "lease", "stale")
SESSION_HEADER: Final = "Raftkv-Session"
SEQ_HEADER: Final = "Raftkv-Seq"
ACK_HEADER: Final = "Raftkv-Ack"
OCTET_STREAM: Final = "application/octet-stream"
MAX_INT: Final = (1 << 63) - 1


def parse_int(raw: str, name: str, *, minimum: int = 0, code: str | None = None) -> int:
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if not raw.isascii() or not raw.strip().isdigit() or n < minimum or n > MAX_INT:
        raise ApiError(
            400,
            code or f"invalid_{name}",
            f"{name} must be an integer >= {minimum}",
            value=raw,
        )
    return n


def query_int(request: web.Request, name: str, *, minimum: int = 0) -> int | None:
    raw = request.query.get(name)
    return None if raw is None else parse_int(raw, name, minimum=minimum)


def query_bool(request: web.Request, name: str) -> bool:
    raw = request.query.get(name)
    if raw is None or raw in ("false", "0"):
        return False
    if raw in ("true", "1", ""):
        return True
    raise ApiError(400, f"invalid_{name}", f"{name} must be true or false", value=raw)


def consistency(request: web.Request) -> str:
    """One of CONSISTENCY_LEVELS: "linearizable" (the default, ReadIndex), "lease" (the
    leader's lease when it holds one, else ReadIndex: docs/api.md) or "stale"."""
    level = request.query.get("consistency", "linearizable")
    if level not in CONSISTENCY_LEVELS:
        raise ApiError(
            400,
            "invalid_consistency",
            "consistency must be linearizable, lease or stale",
            consistency=level,
        )
    return level


def preconditions(request: web.Request, key: str) -> list[Compare]:
    """The compares that If-Match / If-None-Match ask for."""
    out: list[Compare] = []
    if (match := request.headers.get("If-Match")) is not None:
        tag = match.strip()
        if tag == "*":
            out.append(Compare(key, Target.VERSION, CompareOp.GT, 0))
        else:
            digits = tag[1:-1] if len(tag) >= 2 and tag[0] == tag[-1] == '"' else tag
            rev = parse_int(digits, "if_match", minimum=1, code="invalid_precondition")
            out.append(Compare(key, Target.MOD_REVISION, CompareOp.EQ, rev))
    if (none_match := request.headers.get("If-None-Match")) is not None:
        if none_match.strip() != "*":
            raise ApiError(
                400,
                "invalid_precondition",
                'If-None-Match supports only "*" (create if absent)',
                if_none_match=none_match,
            )
        out.append(Compare(key, Target.VERSION, CompareOp.EQ, 0))
    return out


def session_headers(request: web.Request) -> tuple[int, int, int] | None:
    """(session id, seq, ack) when the request names a session."""
    raw_sid = request.headers.get(SESSION_HEADER)
    if raw_sid is None:
        if SEQ_HEADER in request.headers:
            raise ApiError(400, "invalid_session", f"{SEQ_HEADER} without {SESSION_HEADER}")
        return None
    sid = parse_int(raw_sid, "session", minimum=1, code="invalid_session")
    raw_seq = request.headers.get(SEQ_HEADER)
    if raw_seq is None:
        raise ApiError(400, "invalid_session", f"{SESSION_HEADER} needs {SEQ_HEADER} (>= 1)")
    seq = parse_int(raw_seq, "seq", minimum=1, code="invalid_session")
    raw_ack = request.headers.get(ACK_HEADER)
    ack = 0 if raw_ack is None else parse_int(raw_ack, "ack", code="invalid_session")
    return sid, seq, ack


def check_revision(store: MVCCStore, rev: int | None) -> int:
    """The revision a read happens at (validated), or the store's current revision."""
    current = store.revision()
    if rev is None:
        return current
    compacted = store.compact_revision()
    if rev < compacted:
        raise ApiError(
            410,
            "compacted",
            "the requested revision has been compacted",
            revision=rev,
            compact_revision=compacted,
        )
    if rev > current:
        raise ApiError(
            400,
            "future_revision",
            "the requested revision is newer than the store's revision",
            revision=rev,
            current_revision=current,
        )
    return rev


def value_json(value: Value, into: dict[str, object]) -> None:
    """Put `value` into a JSON reply (binary as base64, see the rules)."""
    if isinstance(value, str):
        into["value"] = value
    else:
        into["value"] = base64.b64encode(value).decode("ascii")
        into["value_encoding"] = "base64"


def kv_json(kv: KeyValue, *, keys_only: bool = False) -> dict[str, object]:
    out: dict[str, object] = {"key": kv.key}
    if not keys_only:
        value_json(kv.value, out)
    out["create_revision"] = kv.create_revision
    out["mod_revision"] = kv.mod_revision
    out["version"] = kv.version
    return out


def etag(mod_revision: int) -> str:
    return f'"{mod_revision}"'


def wants_raw(request: web.Request) -> bool:
    """`Accept: application/octet-stream` (and not JSON first): reply with the raw value."""
    accept = request.headers.get("Accept", "")
    return OCTET_STREAM in accept and "application/json" not in accept


def precondition_failed(key: str, current: KeyValue | None) -> ApiError:
    return ApiError(
        412,
        "precondition_failed",
        "precondition failed",
        key=key,
        mod_revision=0 if current is None else current.mod_revision,
    )
