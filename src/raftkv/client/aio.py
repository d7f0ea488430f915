"""`AsyncClient`: the asyncio raftkv client, `Client`'s twin. Use it from one event loop.

Rules: every method builds its call(s) in `protocol`/`programs` and hands them to the shared
`Engine`; this module only performs the engine's actions (`AsyncTransport.send`,
`asyncio.sleep`). `Client` (sync.py) has the same methods with the same signatures; a unit test
keeps the two in step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from raftkv.client import programs, protocol
from raftkv.client.async_transport import AsyncTransport
from raftkv.client.engine import Engine, Flow, Program, Send, Sleep, single
from raftkv.client.options import make_options
from raftkv.client.protocol import RangeQuery
from raftkv.client.types import (
    ClusterStatus,
    Compare,
    DeleteRangeResult,
    DeleteResult,
    KeyValue,
    PutResult,
    RangeResult,
    TxnOp,
    TxnRequest,
    TxnResult,
    Value,
)

T = TypeVar("T")


class AsyncClient:
    """An asyncio client for a raftkv cluster.

    >>> async with AsyncClient(["localhost:8081", "localhost:8082", "localhost:8083"]) as kv:
    ...     await kv.put("greeting", "hello")
    ...     (await kv.get("greeting")).value
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] | None = None,
        *,
        timeout: float = 10.0,
        request_timeout: float = 7.0,
        connect_timeout: float = 1.0,
        sessions: bool = True,
        session_ttl: int | None = None,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        verify: bool = True,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        token_auth: bool = False,
    ) -> None:
        options = make_options(
            endpoints,
            timeout=timeout,
            request_timeout=request_timeout,
            connect_timeout=connect_timeout,
            sessions=sessions,
            session_ttl=session_ttl,
            ca=ca,
            cert=cert,
            key=key,
            verify=verify,
            username=username,
            password=password,
            token=token,
            token_auth=token_auth,
        )
        self._engine = Engine(options, time.monotonic)
        self._transport = AsyncTransport(options.ssl_context)

    # -- keys ----------------------------------------------------------------------------------

    async def put(
        self, key: str, value: Value, *, if_match: int | None = None, if_absent: bool = False
    ) -> PutResult:
        """Store `value` (str: text, bytes: binary). `if_match=rev`: only if the key's
        mod_revision is `rev`; `if_absent=True`: only if the key does not exist. A failed
        condition raises `PreconditionFailed`."""
        return await self._run(
            single(protocol.put(key, value, if_match=if_match, if_absent=if_absent))
        )

    async def get(
        self,
        key: str,
        *,
        revision: int | None = None,
        consistency: str = "linearizable",
        min_revision: int | None = None,
    ) -> KeyValue:
        """The key's value and revisions; `NotFound` if absent. `revision`: as of that past
        revision; `consistency="stale"`: the node's local copy; `min_revision`: wait until the
        node has applied that revision (read your writes from any node)."""
        call = protocol.get(
            key, revision=revision, consistency=consistency, min_revision=min_revision
        )
        return await self._run(single(call))

    async def delete(self, key: str, *, if_match: int | None = None) -> DeleteResult:
        """Delete the key; `NotFound` if absent; `if_match` as for `put`."""
        return await self._run(single(protocol.delete(key, if_match=if_match)))

    async def update(
        self,
        key: str,
        fn: programs.UpdateFn,
        *,
        create: bool = True,
        max_attempts: int | None = None,
    ) -> PutResult:
        """Atomically replace the key's value with `fn(old)` (old is None if absent): a
        compare-and-set loop that retries when another writer got in between."""
        return await self._run(programs.update(key, fn, create=create, max_attempts=max_attempts))

    # -- ranges --------------------------------------------------------------------------------

    async def range(
        self,
        prefix: str | None = None,
        *,
        start: str | None = None,
        end: str | None = None,
        limit: int | None = None,
        after: str | None = None,
        keys_only: bool = False,
        count_only: bool = False,
        revision: int | None = None,
        consistency: str = "linearizable",
        min_revision: int | None = None,
    ) -> RangeResult:
        """One page of the keys with `prefix`, or in `[start, end)`."""
        query = RangeQuery(
            prefix,
            start,
            end,
            limit,
            after,
            keys_only,
            count_only,
            revision,
            consistency,
            min_revision,
        )
        return await self._run(single(protocol.range_(query)))

    async def scan(
        self,
        prefix: str | None = None,
        *,
        start: str | None = None,
        end: str | None = None,
        page_size: int | None = None,
        keys_only: bool = False,
        revision: int | None = None,
        consistency: str = "linearizable",
    ) -> AsyncIterator[KeyValue]:
        """Every key of the range, page by page, all pages at one revision (a snapshot)."""
        query: RangeQuery | None = RangeQuery(
            prefix, start, end, page_size, None, keys_only, False, revision, consistency
        )
        while query is not None:
            page = await self._run(single(protocol.range_(query)))
            for item in page.items:
                yield item
            query = protocol.next_page(query, page)

    async def delete_prefix(self, prefix: str) -> DeleteRangeResult:
        """Delete every key with `prefix` atomically (one revision)."""
        return await self._run(single(protocol.delete_prefix(prefix)))

    # -- transactions and maintenance ----------------------------------------------------------

    async def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[TxnOp] = (),
        failure: Iterable[TxnOp] = (),
    ) -> TxnResult:
        """If every compare holds, run `success`, else `failure`; atomically, one revision."""
        request = TxnRequest(list(compare), list(success), list(failure))
        return await self._run(single(protocol.txn(request)))

    async def compact(self, revision: int) -> int:
        """Discard history below `revision`; returns the compact revision."""
        return await self._run(programs.compact(revision))

    async def status(self) -> ClusterStatus:
        """`/cluster/status` of a node (the leader when known)."""
        return await self._run(single(protocol.cluster_status()))

    async def call(self, call: protocol.Call[T]) -> T:
        """Run one protocol call built elsewhere (e.g. `raftkv.client.members`)."""
        return await self._run(single(call))

    # -- lifecycle -----------------------------------------------------------------------------

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _run(self, program: Program[T]) -> T:
        return await self._drive(self._engine.run(program))

    async def _drive(self, flow: Flow[T]) -> T:
        try:
            action = next(flow)
            while True:
                match action:
                    case Send():
                        outcome = await self._transport.send(action)
                    case Sleep(seconds=seconds):
                        await asyncio.sleep(seconds)
                        outcome = None
                action = flow.send(outcome)
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            flow.close()
