"""The replicated membership record: derived from conf changes, stored with the state, carried
in snapshots."""

from __future__ import annotations

from pathlib import Path

from raftkv.raft.confchange import conf_after
from raftkv.raft.types import ConfChange, ConfChangeKind, ConfState, Entry, Index, NodeId, Term
from raftkv.runtime.members import (
    ClusterRecord,
    MemberContext,
    bootstrap_record,
    decode_context,
    decode_record,
    encode_context,
    encode_record,
    record_after,
)
from raftkv.storage.memory import MemoryState
from raftkv.storage.state_lmdb import LmdbState

N1, N2, N3, N4 = (NodeId(f"node-{i}") for i in range(1, 5))


def _boot() -> tuple[ConfState, ClusterRecord]:
    conf = ConfState(voters=(N1, N2, N3))
    raft = {N1: ("h1", 9001), N2: ("h2", 9002), N3: ("h3", 9003)}
    http = {N1: "h1:8081", N2: "h2:8082", N3: "h3:8083"}
    return conf, bootstrap_record(raft, http, conf.voters)


def _step(conf: ConfState, rec: ClusterRecord, cc: ConfChange) -> tuple[ConfState, ClusterRecord]:
    new = conf_after(conf, cc)
    return new, record_after(rec, cc, new)


def test_add_promote_remove_follow_the_conf_changes() -> None:
    conf, rec = _boot()
    assert rec.initial == ("node-1", "node-2", "node-3")
    ctx = encode_context(MemberContext("h4:9004", "h4:8084", auto_promote=False))
    conf, rec = _step(conf, rec, ConfChange(ConfChangeKind.ADD_LEARNER, N4, ctx))
    assert conf.learners == (N4,)
    assert rec.members["node-4"].raft_address == "h4:9004"
    assert rec.members["node-4"].auto_promote is False
    conf, rec = _step(conf, rec, ConfChange(ConfChangeKind.ADD_VOTER, N4, ctx))
    assert N4 in conf.voters and rec.members["node-4"].http_address == "h4:8084"
    conf, rec = _step(conf, rec, ConfChange(ConfChangeKind.REMOVE_NODE, N1))
    assert "node-1" not in rec.members and rec.removed == ("node-1",)
    assert rec.raft_addresses()[N4] == ("h4", 9004)
    assert rec.initial == ("node-1", "node-2", "node-3")  # never changes
    assert decode_record(encode_record(rec)) == rec


def test_refused_removal_of_the_last_voter_changes_nothing() -> None:
    conf = ConfState(voters=(N1,))
    rec = bootstrap_record({N1: ("h1", 1)}, {N1: "h1:2"}, (N1,))
    conf2, rec2 = _step(conf, rec, ConfChange(ConfChangeKind.REMOVE_NODE, N1))
    assert conf2 == conf and rec2 == rec


def test_foreign_context_gives_empty_addresses() -> None:
    assert decode_context(b"") == MemberContext()
    assert decode_context(b"\xff\x00garbage") == MemberContext()


def test_record_is_stored_with_the_conf_and_travels_in_snapshots(tmp_path: Path) -> None:
    conf, rec = _boot()
    blob = encode_record(rec)
    lm = LmdbState.open(tmp_path / "a")
    lm.apply([Entry(Term(1), Index(1))], conf=conf, cluster=blob)
    assert lm.cluster == blob
    info = lm.build_snapshot(tmp_path / "snap")
    lm.close()
    again = LmdbState.open(tmp_path / "a")
    assert again.cluster == blob  # persisted
    again.close()
    other = LmdbState.open(tmp_path / "b")
    assert other.cluster == b""
    other.install_snapshot(info.path or tmp_path / "snap")
    assert other.cluster == blob and other.conf == conf
    other.close()
    mem = MemoryState()
    mem.install_snapshot(tmp_path / "snap")
    assert mem.cluster == blob
