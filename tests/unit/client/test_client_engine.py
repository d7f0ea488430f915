"""The engine's decisions: failover, leader discovery, deadlines, and exactly-once writes."""

from __future__ import annotations

import json

import pytest

from raftkv.client import protocol
from raftkv.client.engine import DOWN_S, MaybeSent, NotSent, Send, Sleep, single
from raftkv.client.errors import (
    Compacted,
    NotFound,
    OutcomeUnknown,
    PreconditionFailed,
    SessionExpired,
    TLSError,
    Unauthorized,
    Unavailable,
)
from raftkv.client.types import KeyValue, PutResult
from raftkv.client.wire import Reply
from tests.unit.client.scripted import (
    EP1,
    EP2,
    EP3,
    NO_SESSIONS,
    Harness,
    engine,
    error,
    reply,
)

OK_PUT = reply(200, {"key": "k", "value": "v", "message": "stored", "revision": 7})
OK_GET = reply(200, {"key": "k", "value": "v", "mod_revision": 3})
STATUS_NO_LEADER = reply(
    200, {"cluster_size": 3, "local_node_id": "node-1", "leader": None, "nodes": {}}
)


def status(leader_http: str) -> Reply:
    node = {"id": "node-2", "address": "n2:9", "state": "Leader", "http_address": leader_http}
    return reply(
        200,
        {
            "cluster_size": 3,
            "local_node_id": "node-1",
            "leader": "node-2",
            "nodes": {"node-2": node},
        },
    )


class Router:
    """Answers /cluster/status and POST /session from fixed replies, /kv from a script."""

    def __init__(
        self, *kv: object, status_reply: Reply = STATUS_NO_LEADER, session: Reply = NO_SESSIONS
    ) -> None:
        self.kv = list(kv)
        self.status_reply = status_reply
        self.session = session
        self.tokens = 0

    def __call__(self, send: Send) -> object:
        if send.target == "/cluster/status":
            return self.status_reply
        if send.target == "/session":
            return self.session
        if send.target == "/auth/token":
            self.tokens += 1
            return reply(200, {"token": f"tok{self.tokens}", "type": "Bearer"})
        assert self.kv, f"unexpected extra send {send.method} {send.endpoint}{send.target}"
        return self.kv.pop(0)


def harness(router: Router) -> Harness:
    return Harness(router)  # type: ignore[arg-type]


# -- writes without sessions: never two copies that could both apply ----------------------------


def test_write_that_may_have_arrived_is_never_resent_without_a_session() -> None:
    h = harness(Router(MaybeSent("connection reset")))
    with pytest.raises(OutcomeUnknown):
        h.drive(engine(h).call(protocol.put("k", "v")))
    assert len(h.of("PUT")) == 1
    assert h.of("PUT")[0].fresh  # a fresh connection: the failure is attributable


def test_server_timeout_on_write_is_outcome_unknown_not_retried() -> None:
    h = harness(Router(error(504, "timeout")))
    with pytest.raises(OutcomeUnknown) as info:
        h.drive(engine(h).call(protocol.delete("k")))
    assert info.value.code == "timeout"
    assert len(h.of("DELETE")) == 1


def test_forwarding_failure_after_send_is_outcome_unknown() -> None:
    h = harness(Router(error(504, "outcome_unknown", leader="node-2")))
    with pytest.raises(OutcomeUnknown):
        h.drive(engine(h).call(protocol.put("k", "v")))
    assert len(h.of("PUT")) == 1


def test_write_not_sent_fails_over_to_the_next_node() -> None:
    h = harness(Router(NotSent("connection refused"), OK_PUT))
    result = h.drive(engine(h).call(protocol.put("k", "v")))
    assert result == PutResult("k", 7)
    assert [s.endpoint for s in h.of("PUT")] == [EP1, EP2]


@pytest.mark.parametrize("code", ["no_leader", "leader_unreachable", "node_stopping"])
def test_refusals_that_applied_nothing_are_retried_with_backoff(code: str) -> None:
    h = harness(Router(error(503, code), error(503, code), OK_PUT))
    assert h.drive(engine(h).call(protocol.put("k", "v"))).revision == 7
    assert len(h.of("PUT")) == 3
    assert len(h.sleeps) == 2 and 0 < h.sleeps[0] < h.sleeps[1]


def test_not_leader_hint_sends_the_retry_to_the_leader() -> None:
    h = harness(Router(error(503, "not_leader", leader="node-3", leader_http="n3:3"), OK_PUT))
    h.drive(engine(h).call(protocol.put("k", "v")))
    assert [s.endpoint for s in h.of("PUT")] == [EP1, EP3]


def test_unavailable_after_the_deadline_when_no_node_connects() -> None:
    h = harness(Router(*[NotSent("connection refused")] * 1000))
    with pytest.raises(Unavailable) as info:
        h.drive(engine(h, timeout=3.0).call(protocol.put("k", "v")))
    assert "connection refused" in str(info.value)
    assert h.now >= 103.0
    assert {s.endpoint for s in h.of("PUT")} == {EP1, EP2, EP3}


def test_tls_verification_failure_is_raised_at_once() -> None:
    h = harness(Router(NotSent("certificate verify failed", tls=True)))
    with pytest.raises(TLSError):
        h.drive(engine(h).call(protocol.get("k")))
    assert len(h.sends) == 1


# -- reads ----------------------------------------------------------------------------------------


def test_reads_are_retried_after_any_failure() -> None:
    h = harness(Router(MaybeSent("reset"), error(504, "timeout"), OK_GET))
    result = h.drive(engine(h).call(protocol.get("k")))
    assert result == KeyValue("k", "v", mod_revision=3)
    assert len(h.of("GET")) == 3


def test_errors_that_are_answers_are_raised_not_retried() -> None:
    h = harness(Router(error(404, "key_not_found", key="k")))
    with pytest.raises(NotFound) as info:
        h.drive(engine(h).call(protocol.get("k")))
    assert info.value.key == "k" and info.value.endpoint == EP1
    assert len(h.sends) == 1


def test_a_reused_connection_failure_does_not_mark_the_node_down() -> None:
    h = harness(Router(MaybeSent("closed", reused=True), OK_GET))
    h.drive(engine(h).call(protocol.get("k")))
    assert [s.endpoint for s in h.of("GET")] == [EP1, EP1]


# -- leader discovery ---------------------------------------------------------------------------


def test_first_write_discovers_the_leader_and_goes_there() -> None:
    h = harness(Router(OK_PUT, OK_GET, status_reply=status("n2:2")))
    e = engine(h)
    h.drive(e.call(protocol.put("k", "v")))
    h.drive(e.call(protocol.get("k")))
    assert [s.target for s in h.sends] == ["/session", "/cluster/status", "/kv/k", "/kv/k"]
    assert [s.endpoint for s in h.sends[2:]] == [EP2, EP2]
    assert e.leader == EP2


def test_a_dead_leader_is_forgotten_and_skipped() -> None:
    h = harness(Router(OK_PUT, NotSent("refused"), OK_PUT, status_reply=status("n2:2")))
    e = engine(h)
    h.drive(e.call(protocol.put("k", "v")))
    h.now += 1.0  # rediscovery is rate-limited
    h.drive(e.call(protocol.put("k", "v")))
    puts = [s.endpoint for s in h.of("PUT")]
    assert puts[:2] == [EP2, EP2]
    assert puts[2] != EP2  # the status still names n2, but it is down for DOWN_S
    assert h.now < 100 + DOWN_S + 1.5


# -- sessions: exactly-once retries ---------------------------------------------------------------

SESSION = reply(201, {"session_id": 17, "ttl_s": 60})  # the id is the opening entry's index


def headers(send: Send) -> dict[str, str]:
    return dict(send.headers)


def test_session_write_is_retried_with_the_same_sequence_number() -> None:
    h = harness(Router(MaybeSent("reset"), error(504, "timeout"), OK_PUT, session=SESSION))
    e = engine(h)
    assert h.drive(e.call(protocol.put("k", "v"))).revision == 7
    puts = h.of("PUT")
    assert len(puts) == 3
    assert {headers(p)["Raftkv-Session"] for p in puts} == {"17"}
    assert {headers(p)["Raftkv-Seq"] for p in puts} == {"1"}
    assert not any(p.fresh for p in puts)  # pooled connections are fine under a session


def test_session_sequence_and_ack_advance() -> None:
    h = harness(Router(OK_PUT, OK_PUT, OK_PUT, session=SESSION))
    e = engine(h)
    for _ in range(3):
        h.drive(e.call(protocol.put("k", "v")))
    seqs = [(headers(p)["Raftkv-Seq"], headers(p)["Raftkv-Ack"]) for p in h.of("PUT")]
    assert seqs == [("1", "1"), ("2", "2"), ("3", "3")]
    assert len(h.of("POST", "/session")) == 1


def test_expired_session_before_any_copy_arrived_is_reopened() -> None:
    router = Router(error(409, "session_expired"), OK_PUT, session=SESSION)
    h = harness(router)
    e = engine(h)
    h.drive(e.call(protocol.put("k", "v")))
    assert len(h.of("POST", "/session")) == 2
    assert len(h.of("PUT")) == 2


def test_expired_session_after_a_copy_may_have_arrived_is_outcome_unknown() -> None:
    h = harness(Router(MaybeSent("reset"), error(409, "session_expired"), session=SESSION))
    with pytest.raises(OutcomeUnknown) as info:
        h.drive(engine(h).call(protocol.put("k", "v")))
    assert isinstance(info.value.__cause__, SessionExpired)
    assert len(h.of("PUT")) == 2


def test_idle_session_is_reopened_before_use() -> None:
    h = harness(Router(OK_PUT, OK_PUT, session=SESSION))
    e = engine(h)
    h.drive(e.call(protocol.put("k", "v")))
    h.now += 55  # beyond 80 % of the 60 s TTL
    h.drive(e.call(protocol.put("k", "v")))
    assert len(h.of("POST", "/session")) == 2


def test_sessions_off_sends_no_session_request() -> None:
    h = harness(Router(OK_PUT))
    h.drive(engine(h, sessions=False).call(protocol.put("k", "v")))
    assert h.of("POST", "/session") == []


def test_server_without_sessions_is_asked_once() -> None:
    h = harness(Router(OK_PUT, OK_PUT))
    e = engine(h)
    h.drive(e.call(protocol.put("k", "v")))
    h.drive(e.call(protocol.put("k", "v")))
    assert len(h.of("POST", "/session")) == 1
    assert all("Raftkv-Session" not in headers(p) for p in h.of("PUT"))


# -- programs -------------------------------------------------------------------------------------


def test_run_throws_errors_into_the_program() -> None:
    def program():  # type: ignore[no-untyped-def]
        try:
            yield protocol.get("k")
        except NotFound:
            return "absent"
        return "present"

    h = harness(Router(error(404, "key_not_found")))
    assert h.drive(engine(h).run(program())) == "absent"


def test_single_program_returns_the_calls_result() -> None:
    h = harness(Router(OK_GET))
    assert h.drive(engine(h).run(single(protocol.get("k")))).value == "v"


def test_precondition_failed_carries_the_current_revision() -> None:
    h = harness(Router(error(412, "precondition_failed", mod_revision=9)))
    with pytest.raises(PreconditionFailed) as info:
        h.drive(engine(h).call(protocol.put("k", "v", if_match=8)))
    assert info.value.mod_revision == 9


def test_auth_header_is_sent_on_every_request() -> None:
    h = harness(Router(OK_PUT, status_reply=status("n2:2")))
    h.drive(engine(h, username="ann", password="pw").call(protocol.put("k", "v")))
    assert all(headers(s)["Authorization"].startswith("Basic ") for s in h.sends)


def test_stale_request_on_a_first_copy_is_resent_under_a_new_seq() -> None:
    h = harness(Router(error(409, "stale_request"), OK_PUT, session=SESSION))
    h.drive(engine(h).call(protocol.put("k", "v")))
    assert [headers(p)["Raftkv-Seq"] for p in h.of("PUT")] == ["1", "2"]


def test_stale_request_after_a_lost_copy_is_outcome_unknown() -> None:
    h = harness(Router(MaybeSent("reset"), error(409, "stale_request"), session=SESSION))
    with pytest.raises(OutcomeUnknown):
        h.drive(engine(h).call(protocol.put("k", "v")))


def test_compact_retried_after_a_lost_reply_is_success() -> None:
    from raftkv.client import programs

    h = harness(Router(MaybeSent("reset"), error(410, "compacted", revision=5, compact_revision=5)))
    assert h.drive(engine(h).run(programs.compact(5))) == 5
    h2 = harness(Router(error(410, "compacted", revision=5, compact_revision=8)))
    with pytest.raises(Compacted):
        h2.drive(engine(h2).run(programs.compact(5)))


def test_a_user_not_allowed_sessions_writes_without() -> None:
    forbidden = error(403, "permission_denied", permission="root")
    h = harness(Router(OK_PUT, MaybeSent("reset"), session=forbidden))
    e = engine(h)
    h.drive(e.call(protocol.put("k", "v")))
    with pytest.raises(OutcomeUnknown):  # no session: a lost reply is not retried
        h.drive(e.call(protocol.put("k", "v")))
    assert len(h.of("POST", "/session")) == 1


def test_concurrent_first_writes_open_one_session() -> None:
    h = harness(Router(OK_PUT, OK_PUT, session=SESSION, status_reply=status("n2:2")))
    e = engine(h)
    a, b = e.call(protocol.put("a", "v")), e.call(protocol.put("b", "v"))
    first_a = next(a)
    assert isinstance(first_a, Send) and first_a.target == "/session"
    first_b = next(b)
    assert isinstance(first_b, Sleep)  # b waits for a's session instead of opening its own
    h.sends.append(first_a)
    h.drive_from(a, SESSION)
    h.drive_from(b, None)
    assert len(h.of("POST", "/session")) == 1
    assert {headers(p)["Raftkv-Session"] for p in h.of("PUT")} == {"17"}


def test_token_auth_fetches_and_renews_the_token() -> None:
    expired = error(401, "token_expired")
    h = harness(Router(OK_PUT, expired, OK_GET, status_reply=status("n2:2")))
    e = engine(h, username="ann", password="pw", token_auth=True)
    h.drive(e.call(protocol.put("k", "v")))
    assert h.drive(e.call(protocol.get("k"))).value == "v"
    token_calls = h.of("POST", "/auth/token")
    assert len(token_calls) == 2
    assert json.loads(token_calls[0].body) == {"name": "ann", "password": "pw"}
    assert "Authorization" not in headers(token_calls[0])
    auth = [headers(s).get("Authorization") for s in h.sends if s.target.startswith("/kv")]
    assert auth == ["Bearer tok1", "Bearer tok1", "Bearer tok2"]


def test_a_renewed_token_that_is_refused_again_is_raised() -> None:
    h = harness(Router(error(401, "invalid_token"), error(401, "invalid_token")))
    e = engine(h, username="ann", password="pw", token_auth=True)
    with pytest.raises(Unauthorized):
        h.drive(e.call(protocol.get("k")))
    assert len(h.of("POST", "/auth/token")) == 1  # fetched for this call: not renewed again


def test_session_ttl_is_asked_for() -> None:
    h = harness(Router(OK_PUT, session=SESSION))
    h.drive(engine(h, session_ttl=15).call(protocol.put("k", "v")))
    (opened,) = h.of("POST", "/session")
    assert json.loads(opened.body) == {"ttl_s": 15}
    h2 = harness(Router(OK_PUT, session=SESSION))
    h2.drive(engine(h2).call(protocol.put("k", "v")))
    assert h2.of("POST", "/session")[0].body == b""  # the server's default
    with pytest.raises(ValueError):
        engine(h2, session_ttl=0)
