"""The compare-and-set loop `update`, driven with scripted replies."""

from __future__ import annotations

import pytest

from raftkv.client import programs
from raftkv.client.errors import NotFound, PreconditionFailed, RaftkvError
from raftkv.client.types import PutResult, Value
from tests.unit.client.scripted import Harness, engine, error, reply, script


def incr(old: Value | None) -> str:
    return str(int(old or 0) + 1)


def kv(value: str, mod_revision: int) -> object:
    return reply(200, {"key": "c", "value": value, "mod_revision": mod_revision})


def put_ok(revision: int) -> object:
    return reply(200, {"key": "c", "revision": revision})


def run(*outcomes: object, **kw: object) -> tuple[Harness, PutResult]:
    h = Harness(script(*outcomes))  # type: ignore[arg-type]
    e = engine(h, endpoints=["http://n1:1"], sessions=False)
    e._set_leader("n1:1")  # no discovery round in these scripts
    return h, h.drive(e.run(programs.update("c", incr, **kw)))  # type: ignore[arg-type]


def test_update_retries_on_a_conflict_with_a_fresh_read() -> None:
    h, result = run(
        kv("1", 5), error(412, "precondition_failed", mod_revision=6), kv("2", 6), put_ok(7)
    )
    assert result == PutResult("c", 7)
    puts = [s for s in h.sends if s.method == "PUT"]
    assert [dict(p.headers)["If-Match"] for p in puts] == ['"5"', '"6"']
    assert puts[-1].body == b'{"value":"3"}'


def test_update_creates_an_absent_key_only_if_still_absent() -> None:
    h, _ = run(error(404, "key_not_found"), put_ok(1))
    put = next(s for s in h.sends if s.method == "PUT")
    assert dict(put.headers)["If-None-Match"] == "*" and put.body == b'{"value":"1"}'


def test_update_without_create_raises_not_found() -> None:
    with pytest.raises(NotFound):
        run(error(404, "key_not_found"), create=False)


def test_update_refuses_a_server_without_revisions() -> None:
    with pytest.raises(RaftkvError) as info:
        run(reply(200, {"key": "c", "value": "1"}))
    assert info.value.code == "unsupported"


def test_update_gives_up_after_max_attempts() -> None:
    conflict = error(412, "precondition_failed", mod_revision=9)
    with pytest.raises(PreconditionFailed):
        run(kv("1", 5), conflict, kv("1", 9), conflict, max_attempts=2)
