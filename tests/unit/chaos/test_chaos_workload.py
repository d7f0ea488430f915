"""The recording client's outcome mapping: what counts as OK, FAIL (did not happen) or UNKNOWN."""

from __future__ import annotations

import pytest

from raftkv.chaos.httpclient import MaybeSent, NotSent, Reply
from raftkv.chaos.workload import classify_failure, classify_reply
from raftkv.check import OpKind, Outcome

PUT, GET, DELETE = OpKind.PUT, OpKind.GET, OpKind.DELETE


def reply(status: int, body: str) -> Reply:
    return Reply(status, body.encode())


def test_successes() -> None:
    stored = reply(200, '{"key":"k","value":"v","message":"Key-value pair stored successfully"}')
    assert classify_reply(PUT, "k", stored).outcome is Outcome.OK
    got = classify_reply(GET, "k", reply(200, '{"key":"k","value":"v1"}'))
    assert (got.outcome, got.value) == (Outcome.OK, "v1")
    gone = classify_reply(DELETE, "k", reply(200, '{"key":"k","message":"Key deleted"}'))
    assert (gone.outcome, gone.existed) == (Outcome.OK, True)


def test_key_not_found_is_an_observation() -> None:
    missing = reply(404, '{"error":"key not found","code":"key_not_found","key":"k"}')
    got = classify_reply(GET, "k", missing)
    assert (got.outcome, got.value, got.unexpected) == (Outcome.OK, None, False)
    gone = classify_reply(DELETE, "k", missing)
    assert (gone.outcome, gone.existed) == (Outcome.OK, False)
    # a PUT never answers key_not_found
    assert classify_reply(PUT, "k", missing).unexpected


@pytest.mark.parametrize("code", ["no_leader", "not_leader", "leader_unreachable"])
@pytest.mark.parametrize("kind", [PUT, GET, DELETE])
def test_definite_refusals_fail(code: str, kind: OpKind) -> None:
    got = classify_reply(kind, "k", reply(503, f'{{"error":"x","code":"{code}"}}'))
    assert (got.outcome, got.reason, got.unexpected) == (Outcome.FAIL, code, False)


@pytest.mark.parametrize(
    ("status", "code"), [(504, "timeout"), (504, "outcome_unknown"), (503, "node_stopping")]
)
def test_maybe_applied_writes_are_unknown_and_reads_fail(status: int, code: str) -> None:
    body = reply(status, f'{{"error":"x","code":"{code}"}}')
    assert classify_reply(PUT, "k", body).outcome is Outcome.UNKNOWN
    assert classify_reply(DELETE, "k", body).outcome is Outcome.UNKNOWN
    assert classify_reply(GET, "k", body).outcome is Outcome.FAIL
    assert not classify_reply(PUT, "k", body).unexpected


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, '{"error":"internal server error","code":"internal_error"}'),
        (400, '{"error":"bad","code":"invalid_key"}'),
        (200, "not json"),
        (200, '{"key":"other","value":"v"}'),  # a reply about another key
        (200, '{"key":"k","value":7}'),
        (404, '{"error":"no such endpoint","code":"not_found"}'),
    ],
)
def test_anything_else_is_unexpected(status: int, body: str) -> None:
    for kind in (PUT, DELETE):
        got = classify_reply(kind, "k", reply(status, body))
        if got.outcome is Outcome.OK:  # a 200 with a sane body is fine for a write
            continue
        assert (got.outcome, got.unexpected) == (Outcome.UNKNOWN, True)
    got = classify_reply(GET, "k", reply(status, body))
    assert (got.outcome, got.unexpected) == (Outcome.FAIL, True)
    assert got.reason.startswith(f"http_{status}")


def test_connection_failures() -> None:
    # Not sent: nothing happened, whatever the op.
    assert classify_failure(PUT, NotSent("refused")).outcome is Outcome.FAIL
    # Sent: a write may have happened; a read has no effect either way.
    assert classify_failure(PUT, MaybeSent("reset")).outcome is Outcome.UNKNOWN
    assert classify_failure(DELETE, MaybeSent("reply_timeout")).outcome is Outcome.UNKNOWN
    assert classify_failure(GET, MaybeSent("reset")).outcome is Outcome.FAIL
    assert classify_failure(PUT, MaybeSent("reset")).reason == "reset"
