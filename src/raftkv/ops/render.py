"""Rich tables for the inspector's reports (the `--json` output is the same dicts, printed).

Rules: rendering only reads the report dicts built in `inspector.py` / `offline.py`; it decides
nothing (no lag or divergence computed here). Long values are shortened for the terminal only.
"""

from __future__ import annotations

from typing import Any, Final

from rich.console import Console
from rich.table import Table

VALUE_WIDTH: Final = 40


def short(text: object, width: int = VALUE_WIDTH) -> str:
    s = "" if text is None else str(text)
    s = s.replace("\n", "\\n")
    return s if len(s) <= width else s[: width - 1] + "…"


def _dash(value: object) -> str:
    return "—" if value is None else str(value)


def render_status(console: Console, report: dict[str, Any]) -> None:
    """One line per node that fits 80 columns (a pipe gets 80 too): ids and roles are never
    cut; numbers are narrow; why a node is unreachable is written under the table."""
    table = Table(
        title="Cluster status", title_justify="left", box=None, pad_edge=False, padding=(0, 1)
    )
    rows = report["nodes"]
    keep = {  # never shrunk below their longest cell: ids and roles must read whole
        "node": max([5, *(len(r["id"]) + 1 for r in rows)]),
        "role": max([4, *(len(_dash(r["role"])) for r in rows)]),
    }
    for col in ("node", "role", "term", "commit", "applied", "last", "lag", "up", "http"):
        numeric = col in ("term", "commit", "applied", "last", "lag")
        table.add_column(
            col,
            justify="right" if numeric else "left",
            no_wrap=True,
            min_width=keep.get(col),
            overflow="ellipsis",
        )
    notes = []
    for row in report["nodes"]:
        style = "bold green" if row["is_leader"] else ("red" if not row["reachable"] else None)
        if not row["reachable"]:
            notes.append(f"{row['id']}: {row['error']}")
        table.add_row(
            ("*" if row["is_leader"] else " ") + row["id"],
            _dash(row["role"]),
            _dash(row["term"]),
            _dash(row["commit_index"]),
            _dash(row["applied_index"]),
            _dash(row["last_index"]),
            _dash(row["lag"]),
            "yes" if row["reachable"] else "NO",
            row["http_address"],
            style=style,
        )
    console.print(table)
    for note in notes:
        console.print(f"  unreachable {note}", style="red", highlight=False)
    leader = report["leader"] or "none"
    health = "[green]healthy[/]" if report["healthy"] else "[red]NOT healthy[/]"
    console.print(
        f"leader: [bold]{leader}[/] (*)   reachable: {report['reachable']}/{report['cluster_size']}"
        f"   {health}"
    )
    space = report.get("space")
    if space:
        quota = space.get("quota_bytes") or space.get("configured_quota_bytes")
        of = f" of quota {_mib(quota)}" if quota else " (no quota)"
        console.print(f"space: {_mib(space.get('usage_bytes'))} used{of}", highlight=False)
    for alarm in report.get("alarms") or []:
        where = f", {alarm['member']}" if alarm.get("member") else ""
        console.print(
            f"ALARM {alarm.get('alarm')} ({alarm.get('cause')}{where}): growing writes get 507",
            style="bold red",
            highlight=False,
        )


def _mib(value: object) -> str:
    return f"{int(value) / (1 << 20):.1f} MiB" if isinstance(value, int) else "—"


def render_data(console: Console, report: dict[str, Any]) -> None:
    nodes = sorted(report["nodes"])
    table = Table(title=f"Data (prefix {report['prefix']!r})", title_justify="left")
    table.add_column("key")
    for n in nodes:
        info = report["nodes"][n]
        sub = f"applied {info.get('applied_index')}" if info["reachable"] else "unreachable"
        table.add_column(f"{n}\n{sub}")
    table.add_column("")
    for row in report["keys"]:
        cells = [short(row["key"], 32)]
        for n in nodes:
            v = row["values"][n]
            cells.append("[dim](absent)[/]" if v is None else short(v))
        cells.append("[bold red]DIVERGES[/]" if row["divergent"] else "[green]ok[/]")
        table.add_row(*cells, style="red" if row["divergent"] else None)
    console.print(table)
    for n in nodes:
        if error := report["nodes"][n].get("error"):
            console.print(f"[red]{n}: {error}[/]", highlight=False)
    truncated = [n for n in nodes if report["nodes"][n].get("truncated")]
    if truncated:
        console.print(f"[yellow]listing truncated at --limit {report['limit']} on {truncated}[/]")
    if report["consistent"]:
        console.print(f"[green]{len(report['keys'])} keys, identical on every node[/]")
    else:
        console.print(f"[red]{report['divergent']} divergent key(s)[/] of {len(report['keys'])}")


def render_raft(console: Console, report: dict[str, Any]) -> None:
    summary = Table(title=f"Raft log: {report.get('source', '')}", title_justify="left")
    summary.add_column("field")
    summary.add_column("value", justify="right")
    for label, key in (
        ("first index", "first_index"),
        ("last index", "last_index"),
        ("entries", "entry_count"),
        ("snapshot index", "snapshot_index"),
        ("bytes on disk", "bytes_on_disk"),
    ):
        summary.add_row(label, str(report.get(key)))
    hs = report.get("hard_state")
    if hs:
        summary.add_row("hard state", f"term {hs['term']} vote {hs['vote']} commit {hs['commit']}")
    console.print(summary)
    snaps = report.get("snapshots", [])
    if snaps:
        st = Table(title="Snapshots", title_justify="left")
        for col in ("file", "index", "term", "bytes"):
            st.add_column(col)
        for s in snaps:
            st.add_row(s["file"], str(s["index"]), str(s["term"]), str(s["bytes"]))
        console.print(st)
    else:
        console.print("no snapshot files")
    et = Table(title="Entries", title_justify="left")
    for col in ("index", "term", "type", "command"):
        et.add_column(col, justify="right" if col in ("index", "term") else "left")
    for e in report.get("entries", []):
        cmd = e.get("command")
        words = "" if cmd is None else " ".join(f"{k}={short(v, 30)}" for k, v in cmd.items())
        style = "red" if e["type"] in ("corrupt", "undecodable") else None
        et.add_row(str(e["index"]), str(e["term"]), e["type"], words, style=style)
    console.print(et)


def render_test(console: Console, report: dict[str, Any]) -> None:
    table = Table(title="Round trip through every node", title_justify="left")
    for col in ("node", "step", "result", "HTTP", "ms", "detail"):
        table.add_column(col)
    for s in report["steps"]:
        table.add_row(
            s["node"],
            s["step"],
            "[green]PASS[/]" if s["ok"] else "[bold red]FAIL[/]",
            str(s["status"]),
            f"{s['ms']:.1f}",
            s["detail"] or "",
        )
    console.print(table)
    colour = "green" if report["ok"] else "red"
    console.print(f"[{colour}]{report['passed']} passed, {report['failed']} failed[/]")
