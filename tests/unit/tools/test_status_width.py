"""`raftkv inspect status` fits 80 columns without cutting node ids or roles (piped output
gets 80 columns too)."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from raftkv.ops.render import render_status


def _report() -> dict[str, Any]:
    roles = ["Leader", "Follower", "PreCandidate", "Candidate", "Unknown"]
    nodes = []
    for i, role in enumerate(roles, start=1):
        reachable = role != "Unknown"
        nodes.append(
            {
                "id": f"node-{i}",
                "role": role if reachable else None,
                "term": 123,
                "commit_index": 1_234_567,
                "applied_index": 1_234_560,
                "last_index": 1_234_567,
                "lag": 7,
                "reachable": reachable,
                "error": None if reachable else "connection refused",
                "http_address": f"127.0.0.{i}:8081",
                "is_leader": role == "Leader",
            }
        )
    return {"nodes": nodes, "leader": "node-1", "healthy": True, "reachable": 4, "cluster_size": 5}


def test_status_table_fits_80_columns_and_keeps_ids_and_roles() -> None:
    out = io.StringIO()
    render_status(Console(file=out, width=80, color_system=None), _report())
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    for word in ("node-1", "node-5", "Follower", "PreCandidate", "Candidate", "127.0.0.3:8081"):
        assert word in text, text
    assert "…" not in text, text
    assert "connection refused" in text


def test_status_shows_space_and_alarms_within_80_columns() -> None:
    report = _report()
    report["space"] = {"usage_bytes": 3 << 20, "quota_bytes": 8 << 20}
    report["alarms"] = [
        {"alarm": "no_space", "cause": "quota"},
        {"alarm": "no_space", "cause": "disk", "member": "node-3"},
    ]
    out = io.StringIO()
    render_status(Console(file=out, width=80, color_system=None), report)
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "space: 3.0 MiB used of quota 8.0 MiB" in text, text
    assert "ALARM no_space (quota): growing writes get 507" in text, text
    assert "ALARM no_space (disk, node-3)" in text, text
    # Without them (an older node's status): no space line, no alarm.
    out = io.StringIO()
    render_status(Console(file=out, width=80, color_system=None), _report())
    assert "ALARM" not in out.getvalue() and "space:" not in out.getvalue()
