"""The client's exception tree, mapped from the server's stable error `code`.

```
RaftkvError                      every failure the client raises
├── NotFound                     404 key_not_found
├── PreconditionFailed           412 precondition_failed (.mod_revision: current, 0 if absent)
├── Compacted                    410 compacted (.compact_revision)
├── Unauthorized                 401 (no or bad credentials, expired token)
├── Forbidden                    403 (authenticated, but the permission is missing)
├── SessionExpired               409 session_expired (the client reopens it when that is safe)
├── StaleRequest                 409 stale_request (a sequence number the server already forgot)
├── NoSpace                      the cluster's storage quota is exhausted (writes refused)
├── BadRequest                   other 4xx: invalid key, value too large, bad parameter ...
├── Unavailable                  no node could serve the request before the deadline; nothing
│                                was applied (connect refused, no leader, node stopping ...)
├── OutcomeUnknown               a WRITE may or may not have been applied (timeout or connection
│                                lost after sending, without a session to make a retry safe)
├── TLSError                     certificate verification failed (a configuration error)
└── ServerError                  5xx the client cannot interpret, malformed replies
```

Rules:
- `Unavailable` and `OutcomeUnknown` are deliberately separate: catching `Unavailable` and
  retrying is always safe; retrying after `OutcomeUnknown` may apply a write twice.
- Every error carries what the server said: `status`, `code`, `details` (the reply's context
  fields) and `endpoint`. The code -> class table is `_BY_CODE`; an unknown code falls back by
  HTTP status, so a newer server's codes still land in a sensible class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final


class RaftkvError(Exception):
    """Base of every error raised by `raftkv.client`."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "",
        details: Mapping[str, Any] | None = None,
        endpoint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status  # HTTP status, 0 when no reply was received
        self.code = code  # the server's stable code ("" when no reply was received)
        self.details: dict[str, Any] = dict(details or {})
        self.endpoint = endpoint

    def __str__(self) -> str:
        where = f" [{self.endpoint}]" if self.endpoint else ""
        code = f" ({self.code})" if self.code else ""
        return f"{self.message}{code}{where}"


class NotFound(RaftkvError):
    """The key does not exist."""

    @property
    def key(self) -> str | None:
        key = self.details.get("key")
        return key if isinstance(key, str) else None


class PreconditionFailed(RaftkvError):
    """An If-Match / If-None-Match condition did not hold."""

    @property
    def mod_revision(self) -> int:
        """The key's current mod_revision (0 when the key is absent)."""
        rev = self.details.get("mod_revision", 0)
        return rev if isinstance(rev, int) else 0


class Compacted(RaftkvError):
    """The requested revision has been compacted away."""

    @property
    def compact_revision(self) -> int:
        rev = self.details.get("compact_revision", 0)
        return rev if isinstance(rev, int) else 0


class Unauthorized(RaftkvError):
    """Missing, wrong or expired credentials."""


class Forbidden(RaftkvError):
    """The user lacks the permission the request needs."""


class SessionExpired(RaftkvError):
    """The client session expired or is unknown to the cluster."""


class StaleRequest(RaftkvError):
    """The session's sequence number is older than what the cluster still remembers."""


class NoSpace(RaftkvError):
    """The cluster refuses writes: its storage quota is exhausted."""


class BadRequest(RaftkvError):
    """The server refused the request's input (4xx other than the above)."""


class Unavailable(RaftkvError):
    """No node served the request in time; nothing was applied, retrying is safe."""


class OutcomeUnknown(RaftkvError):
    """A write may or may not have been applied. Re-sending it blindly may apply it twice."""


class TLSError(RaftkvError):
    """A TLS handshake failed verification (wrong CA, wrong host name, expired certificate)."""


class ServerError(RaftkvError):
    """A reply the client cannot interpret (5xx without a known code, malformed body)."""


_BY_CODE: Final[Mapping[str, type[RaftkvError]]] = {
    "key_not_found": NotFound,
    "precondition_failed": PreconditionFailed,
    "compacted": Compacted,
    "unauthorized": Unauthorized,
    "unauthenticated": Unauthorized,
    "invalid_credentials": Unauthorized,
    "invalid_token": Unauthorized,
    "token_expired": Unauthorized,
    "forbidden": Forbidden,
    "permission_denied": Forbidden,
    "session_expired": SessionExpired,
    "stale_request": StaleRequest,
    "no_space": NoSpace,
    # Nothing was applied: the node refused before proposing (runtime/api.py, forward.py).
    "no_leader": Unavailable,
    "not_leader": Unavailable,
    "leader_unreachable": Unavailable,
    "node_stopping": Unavailable,
    "not_ready": Unavailable,
    # The node gave up waiting: a write may have been applied.
    "timeout": OutcomeUnknown,
    "outcome_unknown": OutcomeUnknown,
    # A route this server does not have (an older server): not a missing key.
    "not_found": BadRequest,
    "method_not_allowed": BadRequest,
}

_BY_STATUS: Final[Mapping[int, type[RaftkvError]]] = {
    401: Unauthorized,
    403: Forbidden,
    410: Compacted,
    412: PreconditionFailed,
    503: Unavailable,
    507: NoSpace,
}


def error_class(status: int, code: str) -> type[RaftkvError]:
    """The exception class for a server error reply."""
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status)
    if cls is not None:
        return cls
    if 400 <= status < 500:
        return BadRequest
    return ServerError
