"""`raftkv member list|add|remove|promote` and `raftkv leader transfer`: membership from a shell.

Rules:
- Connection, TLS and auth options, `--json`, and exit codes are those of `raftkv put|get`
  (`kv_cmd`): 0 done; 2 bad usage (400: bad id or address, duplicate member); 3 anything else
  (409 change_in_progress / learner_not_ready / would_lose_quorum, no leader ...). The server
  refuses what would be unsafe; the CLI only shows its words and code.
- Tables fit 80 columns (when not a terminal too): long ids and addresses are cut with an
  ellipsis, never wrapped. `--json` prints the server's document.
- New members join as learners and are promoted automatically when caught up (unless
  `--no-auto-promote`); `raftkv serve --join` does the add itself, so `member add` is for a
  node started later or by other tooling.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from raftkv.cli import kv_render
from raftkv.cli.connection import Connection, connection_options
from raftkv.cli.kv_cmd import _run
from raftkv.client import members as calls

WIDTH = 80


def _console() -> Console:
    # Piped or redirected output is laid out for 80 columns, not rich's default guess.
    if sys.stdout.isatty():
        return Console()
    return Console(width=int(os.environ.get("COLUMNS", WIDTH)))


def render_members(doc: dict[str, Any], console: Console) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("ID", no_wrap=True, overflow="ellipsis", max_width=16)
    table.add_column("ROLE", no_wrap=True)
    table.add_column("RAFT ADDRESS", no_wrap=True, overflow="ellipsis", max_width=21)
    table.add_column("HTTP ADDRESS", no_wrap=True, overflow="ellipsis", max_width=21)
    table.add_column("MATCH", no_wrap=True, justify="right")
    table.add_column("HEALTH", no_wrap=True)
    for m in doc.get("members", []):
        role = m["role"] + ("*" if m.get("is_leader") else "")
        healthy = m.get("healthy")
        health = "-" if healthy is None else ("ok" if healthy else "DOWN")
        match = "-" if m.get("match_index") is None else str(m["match_index"])
        table.add_row(m["id"], role, m["raft_address"], m["http_address"], match, health)
    console.print(table)
    leader = doc.get("leader")
    view = "" if doc.get("view", "leader") == "leader" else "  (this node's view: no leader)"
    console.print(f"leader: {leader or 'unknown'} (* marks it){view}", highlight=False)


def register(app: typer.Typer) -> None:
    member = typer.Typer(no_args_is_help=True, help="List, add, promote and remove members")
    leader = typer.Typer(no_args_is_help=True, help="Leadership")
    app.add_typer(member, name="member")
    app.add_typer(leader, name="leader")

    def show(conn: Connection, doc: dict[str, Any], message: str) -> None:
        if conn.as_json:
            sys.stdout.write(kv_render.to_json(doc))
            return
        console = _console()
        console.print(message, highlight=False)
        if "members" in doc:
            render_members(doc, console)

    @member.command("list")
    @connection_options()
    def member_list(
        *,
        conn: Connection,
    ) -> None:
        """The members: role, addresses, and (from the leader) replication and health."""
        doc = _run(conn, lambda c: c.call(calls.list_members()))
        if conn.as_json:
            sys.stdout.write(kv_render.to_json(doc))
        else:
            render_members(doc, _console())

    @member.command("add")
    @connection_options(timeout=30.0)
    def member_add(
        node_id: Annotated[str, typer.Argument(help="The new member's id")],
        raft_address: Annotated[str, typer.Option("--raft-address", help="its Raft host:port")],
        http_address: Annotated[str, typer.Option("--http-address", help="its HTTP host:port")],
        auto_promote: Annotated[
            bool | None,
            typer.Option(
                "--auto-promote/--no-auto-promote",
                help="promote it to voter once caught up (default: the cluster's setting)",
            ),
        ] = None,
        *,
        conn: Connection,
    ) -> None:
        """Add a member as a learner (it never counts toward quorum until promoted)."""
        doc = _run(
            conn,
            lambda c: c.call(
                calls.add_member(node_id, raft_address, http_address, auto_promote=auto_promote)
            ),
        )
        show(conn, doc, f"added {node_id} as a learner")

    @member.command("promote")
    @connection_options(timeout=30.0)
    def member_promote(
        node_id: Annotated[str, typer.Argument(help="The learner to promote")],
        *,
        conn: Connection,
    ) -> None:
        """Make a caught-up learner a voter (refused with its lag while it is behind)."""
        doc = _run(conn, lambda c: c.call(calls.promote_member(node_id)))
        show(conn, doc, f"{node_id} is a voter")

    @member.command("remove")
    @connection_options(timeout=30.0)
    def member_remove(
        node_id: Annotated[str, typer.Argument(help="The member to remove")],
        *,
        conn: Connection,
    ) -> None:
        """Remove a member for good (the leader hands over first; refused if it would cost
        the cluster its quorum). The id is never reused."""
        doc = _run(conn, lambda c: c.call(calls.remove_member(node_id)))
        show(conn, doc, f"removed {node_id}")

    @leader.command("transfer")
    @connection_options(timeout=30.0)
    def leader_transfer(
        to: Annotated[str, typer.Argument(help="The voter that should lead")],
        *,
        conn: Connection,
    ) -> None:
        """Hand leadership to `to` (returns once it leads)."""
        doc = _run(conn, lambda c: c.call(calls.transfer_leader(to)))
        show(conn, doc, f"{doc.get('leader', to)} is the leader")
