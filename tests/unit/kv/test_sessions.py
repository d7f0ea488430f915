"""Client sessions (thesis §6.3): dedup, acks, bounds, expiry by the leader's time in commands."""

from __future__ import annotations

from raftkv.kv.commands import (
    Delete,
    DeleteResult,
    OpenSession,
    Put,
    PutResult,
    SessionError,
    SessionRequest,
    SessionResult,
)
from raftkv.kv.machine import apply_command
from raftkv.kv.mvcc import DictState
from raftkv.kv.sessions import MAX_REPLIES_PER_SESSION


def opened(ttl_ms: int = 1000, at_ms: int = 0, index: int = 1) -> DictState:
    s = DictState()
    assert apply_command(s, OpenSession(ttl_ms, at_ms), index) == SessionResult(index, ttl_ms)
    return s


def req(seq: int, cmd: Put | Delete, *, ack: int = 0, t: int = 10, sid: int = 1) -> SessionRequest:
    return SessionRequest(sid, seq, ack, t, cmd)


def test_retry_is_applied_once_and_answered_with_the_original_reply() -> None:
    s = opened()
    assert apply_command(s, req(1, Put("k", "a")), 2) == PutResult(2)
    # Someone else writes in between; the retried request must not overwrite it.
    apply_command(s, Put("k", "other"), 3)
    assert apply_command(s, req(1, Put("k", "a")), 4) == PutResult(2)
    assert s.get("k") is not None and s.get("k").value == "other"  # type: ignore[union-attr]
    assert s.revision() == 3


def test_out_of_order_and_gaps_are_fine_acks_make_old_seqs_stale() -> None:
    s = opened()
    assert apply_command(s, req(5, Put("a", "5")), 2) == PutResult(2)
    assert apply_command(s, req(3, Put("b", "3")), 3) == PutResult(3)
    assert apply_command(s, req(7, Delete("a"), ack=4), 4) == DeleteResult(True, 4)
    assert apply_command(s, req(3, Put("b", "3")), 5) == SessionError("stale_request", 1, 3)
    assert apply_command(s, req(5, Put("a", "5")), 6) == PutResult(2)  # 5 >= ack: remembered
    assert s.reply_seqs(1) == [5, 7]


def test_replies_are_bounded_per_session() -> None:
    s = opened()
    n = MAX_REPLIES_PER_SESSION + 3
    for seq in range(1, n + 1):
        apply_command(s, req(seq, Put("k", str(seq))), seq + 1)
    assert len(s.reply_seqs(1)) == MAX_REPLIES_PER_SESSION
    assert apply_command(s, req(1, Put("k", "1")), n + 5) == SessionError("stale_request", 1, 1)
    assert apply_command(s, req(n, Put("k", "x")), n + 6) == PutResult(n + 1)


def test_expiry_follows_the_time_in_commands_and_use_renews() -> None:
    s = opened(ttl_ms=100, at_ms=1000)
    assert apply_command(s, req(1, Put("k", "1"), t=1090), 2) == PutResult(2)
    # Used at 1090: alive until 1190.
    assert apply_command(s, req(2, Put("k", "2"), t=1180), 3) == PutResult(3)
    # A command stamped with an older time (a slower leader's clock) does not turn time back.
    assert apply_command(s, req(3, Put("k", "3"), t=500), 4) == PutResult(4)
    assert s.clock_ms() == 1180
    assert apply_command(s, req(4, Put("k", "4"), t=1281), 5) == SessionError(
        "session_expired", 1, 4
    )
    assert s.session(1) is None
    assert apply_command(s, req(5, Put("k", "5"), t=1282), 6) == SessionError(
        "session_expired", 1, 5
    )


def test_unknown_session_is_expired_and_open_purges_expired_ones() -> None:
    s = opened(ttl_ms=100, at_ms=0)
    assert apply_command(s, req(1, Put("k", "v"), sid=99), 2) == SessionError(
        "session_expired", 99, 1
    )
    apply_command(s, OpenSession(100, 500), 3)
    assert s.session_ids() == [3]
