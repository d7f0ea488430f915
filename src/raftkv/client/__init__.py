"""raftkv.client: the Python client of raftkv, blocking (`Client`) and asyncio (`AsyncClient`).

```python
from raftkv.client import Client

with Client(["localhost:8081", "localhost:8082", "localhost:8083"]) as kv:
    kv.put("config/color", "blue")
    item = kv.get("config/color")          # KeyValue(key, value, create/mod_revision, version)
    kv.put("config/color", "red", if_match=item.mod_revision)   # compare-and-set
    kv.update("counter", lambda old: str(int(old or 0) + 1))    # CAS retry loop
```

`AsyncClient` is imported on first use (it brings aiohttp), so `Client` alone stays light.

Layout: `protocol` (sans-I/O encoding of the HTTP API), `engine` (leader discovery, failover,
retries, sessions: every decision, sans-I/O), `programs` (multi-call operations), two thin
drivers (`sync` over `sync_transport`, `aio` over `async_transport`), `errors`, `types`.
"""

from typing import TYPE_CHECKING

from raftkv.client.errors import (
    BadRequest,
    Compacted,
    Forbidden,
    NoSpace,
    NotFound,
    OutcomeUnknown,
    PreconditionFailed,
    RaftkvError,
    ServerError,
    SessionExpired,
    StaleRequest,
    TLSError,
    Unauthorized,
    Unavailable,
)
from raftkv.client.sync import Client
from raftkv.client.types import (
    ClusterStatus,
    Compare,
    Delete,
    DeleteRangeResult,
    DeleteResult,
    Get,
    KeyValue,
    NodeInfo,
    Put,
    PutResult,
    RangeResult,
    TxnResult,
    Value,
)

if TYPE_CHECKING:
    from raftkv.client.aio import AsyncClient


def __getattr__(name: str) -> object:
    # AsyncClient (and aiohttp, ~0.5 s of imports) loads on first use: a script using the
    # blocking Client never pays for it.
    if name == "AsyncClient":
        from raftkv.client.aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AsyncClient",
    "BadRequest",
    "Client",
    "ClusterStatus",
    "Compacted",
    "Compare",
    "Delete",
    "DeleteRangeResult",
    "DeleteResult",
    "Forbidden",
    "Get",
    "KeyValue",
    "NoSpace",
    "NodeInfo",
    "NotFound",
    "OutcomeUnknown",
    "PreconditionFailed",
    "Put",
    "PutResult",
    "RaftkvError",
    "RangeResult",
    "ServerError",
    "SessionExpired",
    "StaleRequest",
    "TLSError",
    "TxnResult",
    "Unauthorized",
    "Unavailable",
    "Value",
]
