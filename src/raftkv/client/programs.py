"""Multi-call operations as programs: generators of `Call`s, run by `Engine.run`.

A program yields a call and receives its result (or has its error thrown in), so composite
operations like a compare-and-set loop are written once for both clients.

Rules:
- `update` is a CAS retry loop (etcd's STM pattern in miniature): read, compute, write with
  `If-Match: <mod_revision>` (or `If-None-Match: *` for an absent key), and on 412 start over
  with a fresh read. It never blind-writes: a server that reports no `mod_revision` (one older
  than revisions) is refused rather than silently losing updates. Each 412 means another writer
  succeeded, so the loop as a whole always makes progress; `max_attempts` bounds one caller.
- `fn` runs in the caller's thread / task, between the read and the write; it must be pure (it
  may run several times).
- `compact` may be sent twice (the engine retries it after a lost reply): the copy finds the
  history already compacted at exactly the asked revision and gets 410; that is the state
  asked for, so it is success. A 410 naming a higher compact revision is raised.
"""

from __future__ import annotations

from collections.abc import Callable

from raftkv.client import protocol
from raftkv.client.engine import Program
from raftkv.client.errors import Compacted, NotFound, PreconditionFailed, RaftkvError
from raftkv.client.types import KeyValue, PutResult, Value

UpdateFn = Callable[[Value | None], Value]


def update(
    key: str,
    fn: UpdateFn,
    *,
    create: bool = True,
    max_attempts: int | None = None,
) -> Program[PutResult]:
    attempts = 0
    while True:
        attempts += 1
        current: KeyValue | None
        try:
            current = yield protocol.get(key)
        except NotFound:
            if not create:
                raise
            current = None
        if current is not None and current.mod_revision == 0:
            raise RaftkvError(
                "the server reports no mod_revision: compare-and-set needs revisions",
                code="unsupported",
            )
        new = fn(current.value if current is not None else None)
        call = (
            protocol.put(key, new, if_absent=True)
            if current is None
            else protocol.put(key, new, if_match=current.mod_revision)
        )
        try:
            result: PutResult = yield call
        except PreconditionFailed:
            if max_attempts is not None and attempts >= max_attempts:
                raise
            continue
        return result


def compact(revision: int) -> Program[int]:
    try:
        done: int = yield protocol.compact(revision)
    except Compacted as exc:
        if exc.compact_revision == revision:
            return revision
        raise
    return done
