"""Client sessions: exactly-once writes across retries (Raft thesis §6.3), pure apply logic.

Rules:
- A session is opened by a committed `OpenSession`; its id is that entry's index, so every node
  assigns the same id. It lives `ttl_ms` after its last use.
- Time is the state machine's clock: the largest `time_ms` seen in a command, stamped by the
  leader that proposed it. It never goes back, and no node's local clock is ever read (§6.3:
  expiry must be decided identically by every replica).
- A `SessionRequest(session_id, seq, ack, cmd)`:
  1. an unknown or expired session -> `SessionError("session_expired")` (an expired session is
     forgotten with its replies);
  2. a remembered `seq` -> the remembered reply, unchanged (the retry is not applied again);
  3. `ack`: replies below it have reached the client; they are forgotten and `floor` rises;
  4. `seq` below `floor` (forgotten, so it may have been applied) -> `stale_request`;
  5. otherwise `cmd` is applied and its reply remembered under `seq` (except a `NoSpace`
     refusal, which changed nothing: the same seq may be retried once the alarm clears). At most
     `MAX_REPLIES_PER_SESSION` replies are kept: beyond that the lowest is forgotten and
     `floor` rises past it. Sequence numbers may have gaps and arrive out of order.
  Every use (also a duplicate or a stale request) renews the session.
- `OpenSession` also forgets expired sessions, and the least recently used ones beyond
  `MAX_SESSIONS`, so the table is bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from raftkv.kv.commands import (
    OpenSession,
    Result,
    SessionError,
    SessionRequest,
    SessionResult,
    SessionWrite,
)
from raftkv.kv.mvcc import MVCCStore
from raftkv.kv.quota import NoSpace

MAX_REPLIES_PER_SESSION: Final = 256
MAX_SESSIONS: Final = 10_000
SESSION_EXPIRED: Final = "session_expired"
STALE_REQUEST: Final = "stale_request"

ApplyWrite = Callable[[MVCCStore, SessionWrite, int], Result]


def _tick(store: MVCCStore, time_ms: int) -> int:
    now = max(store.clock_ms(), time_ms)
    store.set_clock_ms(now)
    return now


def open_session(store: MVCCStore, cmd: OpenSession, revision: int) -> SessionResult:
    now = _tick(store, cmd.time_ms)
    live: list[tuple[int, int]] = []  # (last used, id)
    for sid in store.session_ids():
        rec = store.session(sid)
        if rec is None:
            continue
        ttl_ms, last_ms, _ = rec
        if last_ms + ttl_ms < now:
            store.drop_session(sid)
        else:
            live.append((last_ms, sid))
    live.sort()
    for _, sid in live[: max(0, len(live) - MAX_SESSIONS + 1)]:
        store.drop_session(sid)
    store.put_session(revision, cmd.ttl_ms, now, 1)
    return SessionResult(revision, cmd.ttl_ms)


def apply_session_request(
    store: MVCCStore, req: SessionRequest, revision: int, apply_write: ApplyWrite
) -> Result:
    now = _tick(store, req.time_ms)
    sid, seq = req.session_id, req.seq
    rec = store.session(sid)
    if rec is None or rec[1] + rec[0] < now:
        store.drop_session(sid)
        return SessionError(SESSION_EXPIRED, sid, seq)
    ttl_ms, _, floor = rec
    remembered = store.reply(sid, seq)
    if remembered is not None:
        store.put_session(sid, ttl_ms, now, floor)
        return remembered
    if req.ack > floor:
        for old in store.reply_seqs(sid):
            if old >= req.ack:
                break
            store.drop_reply(sid, old)
        floor = req.ack
    if seq < floor:
        store.put_session(sid, ttl_ms, now, floor)
        return SessionError(STALE_REQUEST, sid, seq)
    result = apply_write(store, req.cmd, revision)
    if isinstance(result, NoSpace):
        store.put_session(sid, ttl_ms, now, floor)
        return result
    store.put_reply(sid, seq, result)
    seqs = store.reply_seqs(sid)
    for old in seqs[: max(0, len(seqs) - MAX_REPLIES_PER_SESSION)]:
        store.drop_reply(sid, old)
        floor = max(floor, old + 1)
    store.put_session(sid, ttl_ms, now, floor)
    return result
