"""Peer frames that carry clients' writes from a follower to the leader, and the replies back.

Rules:
- `ForwardBatch` (follower -> leader, on the follower's outbound peer connection) holds the
  writes a follower forwarded during one loop turn; `ForwardReplies` (leader -> follower, on the
  leader's outbound connection) holds the answers, each tied to its request by `id`. Both are
  members of `codec.wire.WireMessage`, so they travel in the ordinary frames (length prefix,
  version byte, msgpack) and are refused by the same frame size limit.
- A node sends a `ForwardBatch` only to a peer whose Hello announced `forwarding >=
  FORWARDING_VERSION`: a node that does not know these frames would drop the whole connection
  on one (an unknown tag is a `FrameError`). The leader answers on the link the batch came from.
- What a request may hold is bounded here, whatever the frame size limit allows: at most
  MAX_FORWARDS per frame, method PUT or DELETE, a target under `/kv/` of at most
  MAX_TARGET_CHARS with no control characters, spaces or fragment, at most MAX_FORWARD_HEADERS
  headers whose names are RFC 9110 tokens and whose values hold no CR, LF or NUL and at most
  MAX_HEADER_VALUE_CHARS; a reply's status is 100-599, its headers bounded likewise. Bodies are
  bounded by the frame limit here and by the leader's own value limits in its handlers.
  `check_forward` raises `InvalidMessage` (a `FrameError`): the transport drops the connection.
- Which headers mean anything (the client's credentials, preconditions, session) is the
  server's rule (`server/forward.py`), not this module's: here they are only bounded.
- Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

FORWARDING_VERSION: Final = 1
"""The version of these frames a node announces in its Hello (`Hello.forwarding`); 0: none."""

MAX_FORWARDS: Final = 4096
MAX_TARGET_CHARS: Final = 32 << 10  # a 4 KiB key percent-encoded is 12 KiB; a query fits too
MAX_FORWARD_HEADERS: Final = 32
MAX_HEADER_NAME_CHARS: Final = 256
MAX_HEADER_VALUE_CHARS: Final = 16 << 10
FORWARD_METHODS: Final = frozenset({"PUT", "DELETE"})
ID_LIMIT: Final = 1 << 63

_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_TARGET: Final = re.compile(r"[\x00-\x20\x7f#]")
_BAD_VALUE: Final = re.compile(r"[\r\n\x00]")


class ForwardedRequest(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One client request as the follower received it: what the leader needs to run it."""

    id: int  # the follower's number for it, unique among its requests in flight
    method: str
    target: str  # path and query exactly as the client encoded them
    headers: tuple[tuple[str, str], ...]
    body: bytes


class ForwardBatch(msgspec.Struct, frozen=True, array_like=True, tag=True, gc=False):
    """The requests a follower forwards to the leader in one loop turn."""

    requests: tuple[ForwardedRequest, ...]


class ForwardedReply(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The leader's answer to request `id`: what the client gets, as it would from the leader."""

    id: int
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class ForwardReplies(msgspec.Struct, frozen=True, array_like=True, tag=True, gc=False):
    """Answers from the leader to forwarded requests (of one or more batches)."""

    replies: tuple[ForwardedReply, ...]


class InvalidForward(ValueError):
    """A forward frame's values are out of bounds (wrapped as `InvalidMessage` by validate)."""


def _headers(headers: tuple[tuple[str, str], ...]) -> None:
    if len(headers) > MAX_FORWARD_HEADERS:
        raise InvalidForward(f"{len(headers)} headers (limit {MAX_FORWARD_HEADERS})")
    for name, value in headers:
        if len(name) > MAX_HEADER_NAME_CHARS or not _TOKEN.fullmatch(name):
            raise InvalidForward(f"header name {name[:40]!r} is not a token")
        if len(value) > MAX_HEADER_VALUE_CHARS:
            raise InvalidForward(f"header {name} of {len(value)} characters")
        if _BAD_VALUE.search(value):
            raise InvalidForward(f"header {name} holds CR, LF or NUL")


def _id(value: int) -> None:
    if not 0 <= value < ID_LIMIT:
        raise InvalidForward(f"request id {value} out of range [0, 2**63)")


def check_forward(msg: ForwardBatch | ForwardReplies) -> None:
    """Raise `InvalidForward` unless every value of `msg` is within the module's bounds."""
    if isinstance(msg, ForwardBatch):
        items: tuple[ForwardedRequest, ...] | tuple[ForwardedReply, ...] = msg.requests
    else:
        items = msg.replies
    if not items or len(items) > MAX_FORWARDS:
        raise InvalidForward(f"{len(items)} items in one frame (1 to {MAX_FORWARDS})")
    if isinstance(msg, ForwardBatch):
        for req in msg.requests:
            _id(req.id)
            if req.method not in FORWARD_METHODS:
                raise InvalidForward(f"method {req.method[:20]!r} is not forwarded this way")
            target = req.target
            if not target.startswith("/kv/") or len(target) > MAX_TARGET_CHARS:
                raise InvalidForward(f"target {target[:40]!r} not under /kv/ or too long")
            if _BAD_TARGET.search(target):
                raise InvalidForward("target holds a control character, space or fragment")
            _headers(req.headers)
        return
    for reply in msg.replies:
        _id(reply.id)
        if not 100 <= reply.status <= 599:
            raise InvalidForward(f"status {reply.status} out of range")
        _headers(reply.headers)
