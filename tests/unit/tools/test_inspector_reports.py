"""The inspector's judgements: leader, lag, reachability, data divergence, exit status."""

from __future__ import annotations

from typing import Any

from raftkv.cli.inspect_cmd import failed
from raftkv.ops.inspector import build_status, compare_data, pick_leader

MEMBERS = {"node-1": "h:1", "node-2": "h:2", "node-3": "h:3"}


def local(node: str, role: str, term: int, commit: int, applied: int, last: int) -> dict[str, Any]:
    return {
        "node_id": node,
        "role": role,
        "term": term,
        "leader_id": None,
        "commit_index": commit,
        "applied_index": applied,
        "last_index": last,
    }


def test_status_marks_the_leader_and_computes_lag() -> None:
    report = build_status(
        MEMBERS,
        {
            "node-1": local("node-1", "Follower", 3, 10, 7, 12),
            "node-2": local("node-2", "Leader", 3, 12, 12, 12),
            "node-3": None,
        },
        {"node-3": "connection refused"},
    )
    assert report["leader"] == "node-2"
    rows = {r["id"]: r for r in report["nodes"]}
    assert rows["node-2"]["is_leader"] and not rows["node-1"]["is_leader"]
    assert rows["node-1"]["lag"] == 5  # leader commit 12 - applied 7
    assert rows["node-2"]["lag"] == 0
    assert rows["node-3"]["reachable"] is False
    assert rows["node-3"]["lag"] is None and rows["node-3"]["error"] == "connection refused"
    assert report["reachable"] == 2 and report["healthy"]
    assert [r["id"] for r in report["nodes"]] == ["node-1", "node-2", "node-3"]


def test_a_stale_leader_of_an_older_term_is_not_the_leader() -> None:
    locals_ = {
        "node-1": local("node-1", "Leader", 2, 5, 5, 5),  # deposed, has not noticed yet
        "node-2": local("node-2", "Leader", 3, 6, 6, 6),
        "node-3": local("node-3", "Follower", 3, 6, 6, 6),
    }
    assert pick_leader(locals_) == "node-2"
    report = build_status(MEMBERS, locals_)
    assert [r["id"] for r in report["nodes"] if r["is_leader"]] == ["node-2"]


def test_no_leader_means_unknown_lag_and_unhealthy() -> None:
    report = build_status(MEMBERS, {n: local(n, "Candidate", 4, 1, 1, 1) for n in MEMBERS})
    assert report["leader"] is None and not report["healthy"]
    assert all(r["lag"] is None for r in report["nodes"])
    assert failed({"status": report})


def test_identical_data_is_consistent() -> None:
    data = {"a": "1", "b": "2"}
    report = compare_data({n: dict(data) for n in MEMBERS})
    assert report["consistent"] and report["divergent"] == 0
    assert [r["key"] for r in report["keys"]] == ["a", "b"]
    assert not failed({"data": report})


def test_divergent_and_missing_values_are_flagged() -> None:
    report = compare_data(
        {
            "node-1": {"a": "1", "b": "2"},
            "node-2": {"a": "1", "b": "OTHER"},
            "node-3": {"a": "1"},
        }
    )
    rows = {r["key"]: r for r in report["keys"]}
    assert not rows["a"]["divergent"]
    assert rows["b"]["divergent"]
    assert rows["b"]["values"] == {"node-1": "2", "node-2": "OTHER", "node-3": None}
    assert report["divergent"] == 1 and not report["consistent"]
    assert failed({"data": report})


def test_unreachable_node_is_not_divergence_but_not_consistent() -> None:
    report = compare_data({"node-1": {"a": "1"}, "node-2": None, "node-3": {"a": "1"}})
    assert report["divergent"] == 0
    assert not report["consistent"]
    assert report["nodes"]["node-2"] == {"reachable": False, "keys": None}
    assert report["keys"][0]["values"]["node-2"] is None


def test_truncated_listings_are_compared_only_up_to_the_shortest() -> None:
    report = compare_data(
        {"node-1": {"a": "1", "b": "2"}, "node-2": {"a": "1", "b": "2", "c": "3"}},
        {"node-1": {"truncated": True}, "node-2": {"truncated": False}},
    )
    assert [r["key"] for r in report["keys"]] == ["a", "b"]
    assert report["consistent"]


def test_failed_test_report_fails() -> None:
    assert failed({"test": {"ok": False}})
    assert not failed({"test": {"ok": True}})
