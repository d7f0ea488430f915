"""JSON replies and the error shape of the HTTP API.

Rules:
- Every error reply is JSON `{"error": words, "code": stable_snake_case, ...context}`. Codes are
  part of the API: clients branch on them, so they never change meaning.
- Handlers raise `ApiError`; `error_middleware` turns it, aiohttp's own HTTP errors (unknown
  route 404, 405, 413 ...) and unexpected exceptions into that shape. An unexpected exception is a
  bug: it is logged with its traceback and still answered in JSON (500 `internal_error`).
- `NodeHalted` from any route is 503 `node_halted` with the node's `halted` report, and
  `NodeStopping` 503 `node_stopping`: what a node that refuses reads (runtime/halt.py
  `check_readable`) answers wherever the refusal is raised — a KV read, an auth record read
  while authenticating a request or listing users, an inspector or backup read.
- Errors produced before any handler runs (a malformed or over-long request line) are rendered in
  the same shape by `raftkv.server.runner`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import msgspec
import structlog
from aiohttp import web

from raftkv.runtime.api import (
    FeatureNotEnabled,
    HaltReport,
    NodeHalted,
    NodeStopping,
    NoLeaderError,
    OperationTimeout,
)

log = structlog.get_logger(__name__)

JSON_CONTENT_TYPE: Final = "application/json"

# aiohttp's own HTTP errors -> our codes. Anything else gets "http_<status>".
_HTTP_CODES: Final[Mapping[int, tuple[str, str]]] = {
    400: ("bad_request", "bad request"),
    404: ("not_found", "no such endpoint"),
    405: ("method_not_allowed", "method not allowed"),
    413: ("request_too_large", "request body too large"),
    414: ("request_line_too_long", "request line too long"),
    417: ("expectation_failed", "unsupported Expect header"),
    431: ("headers_too_large", "request headers too large"),
}


class ApiError(Exception):
    """An expected failure of a request, answered as a JSON error reply."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **context: object,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.context = context

    def response(self) -> web.Response:
        return error_response(
            self.status, self.code, self.message, headers=self.headers, **self.context
        )


def json_response(
    body: object, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    # msgspec encodes dicts and dataclasses several times faster than the json module.
    return web.Response(
        status=status,
        body=msgspec.json.encode(body),
        content_type=JSON_CONTENT_TYPE,
        headers=headers,
    )


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    **context: object,
) -> web.Response:
    return json_response(
        {"error": message, "code": code, **context}, status=status, headers=headers
    )


def http_error_code(status: int, reason: str) -> tuple[str, str]:
    """The (code, words) for an HTTP error status that no handler of ours produced."""
    return _HTTP_CODES.get(status, (f"http_{status}", reason.lower() or "error"))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def node_failure(exc: BaseException, *, write: bool) -> ApiError | None:
    """The API error for a node call's failure (`http.call_node`'s mapping, module rules of
    http.py); None for anything else (NodeHalted, bugs: `error_reply` answers those)."""
    if isinstance(exc, NoLeaderError):
        return ApiError(
            503, "no_leader", "no leader is known; retry later", headers={"Retry-After": "1"}
        )
    if isinstance(exc, OperationTimeout | TimeoutError):
        words = "the write may or may not have been applied" if write else "the read failed"
        return ApiError(504, "timeout", f"request timed out; {words}")
    if isinstance(exc, NodeStopping):
        return stopping_error()
    if isinstance(exc, FeatureNotEnabled):
        # Nothing was proposed: safe to retry once every member runs the newer version.
        return ApiError(
            503,
            "feature_not_enabled",
            str(exc),
            headers={"Retry-After": "5"},
            kind=exc.kind,
            needs_command_set=exc.needs,
            cluster_command_set=exc.cluster_command_set,
            waiting_for=exc.waiting_for,
        )
    return None


def stopping_error() -> ApiError:
    return ApiError(503, "node_stopping", "the node is shutting down", headers={"Retry-After": "1"})


def halted_error(report: HaltReport) -> ApiError:
    """503 `node_halted`: this node stopped at a committed entry it cannot apply."""
    return ApiError(
        503,
        "node_halted",
        f"this node halted at committed entry {report.index}, which it cannot apply; it "
        "serves no reads or writes: use another node (a write in flight here has an unknown "
        "outcome)",
        headers={"Retry-After": "5"},
        halted=report.to_json(),
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:  # CancelledError is a BaseException: it passes
        return error_reply(exc, request)


def error_reply(exc: Exception, request: web.Request) -> web.StreamResponse:
    """The reply to a handler's exception (both engines); call it from the `except` block.
    Re-raises an HTTPException below 400 (a redirect is not an error)."""
    if isinstance(exc, ApiError):
        return exc.response()
    if isinstance(exc, NodeHalted):  # from any route: runtime/halt.py
        return halted_error(exc.report).response()
    if isinstance(exc, NodeStopping):  # from any route, e.g. the auth middleware's reads
        return stopping_error().response()
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code, words = http_error_code(exc.status, exc.reason)
        # Keep headers that matter to the client (Allow on 405); drop aiohttp's text body's.
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, code, words, headers=keep)
    log.exception("unexpected error", method=request.method, path=request.path)
    return error_response(500, "internal_error", "internal server error")
