"""`raftkv inspect [status|data|raft|test|all]`: the seed's database inspector.

Rules: the reports are built in `raftkv.ops.inspector` (online) and `raftkv.ops.offline`
(`raft --data-dir`); this module only parses flags and prints, a rich table on a terminal or the
report's JSON with `--json`. TLS and credentials: the shared flags (cli/connection.py); with
auth on, `data`, `raft` (online) and `test` need root. Exit codes: 0 fine; 1 a check failed
(test step failed, data diverges, cluster unhealthy); 2 the cluster or data directory could
not be read.
"""

from __future__ import annotations

import asyncio
import enum
import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console

from raftkv.cli.connection import Connection, connection_options
from raftkv.ops import render
from raftkv.ops.inspector import DEFAULT_ADDRESS, InspectError, run_report
from raftkv.ops.offline import OfflineError, read_offline


class What(enum.StrEnum):
    all = "all"
    status = "status"
    data = "data"
    raft = "raft"
    test = "test"


def _collect(
    what: What, address: str, opts: dict[str, Any], data_dir: Path | None, conn: Connection
) -> dict[str, Any]:
    kinds = ["status", "data", "raft", "test"] if what is What.all else [what.value]
    out: dict[str, Any] = {}
    online = [k for k in kinds if k != "raft" or data_dir is None]
    access: dict[str, Any] = {}
    if online:  # TLS and credentials as every command takes them (cli/connection.py)
        try:
            access = {
                "ssl_context": conn.ssl_context(address.startswith("https://") or conn.tls_asked),
                "auth_header": conn.auth_header(),
            }
        except (ValueError, OSError) as exc:
            raise InspectError(f"bad connection options: {exc}") from None
    for kind in kinds:
        if kind == "raft" and data_dir is not None:
            out[kind] = read_offline(data_dir, opts["start"], opts["log_limit"])
        elif kind == "raft":
            out[kind] = asyncio.run(
                run_report(
                    "raft",
                    address,
                    node=opts["node"],
                    start=opts["start"],
                    limit=opts["log_limit"],
                    **access,
                )
            )
        elif kind == "data":
            out[kind] = asyncio.run(
                run_report("data", address, prefix=opts["prefix"], limit=opts["limit"], **access)
            )
        else:
            out[kind] = asyncio.run(run_report(kind, address, **access))
    return out


def failed(reports: dict[str, Any]) -> bool:
    """Whether any report shows a problem (exit 1)."""
    return (
        ("status" in reports and not reports["status"]["healthy"])
        or ("data" in reports and not reports["data"]["consistent"])
        or ("test" in reports and not reports["test"]["ok"])
    )


def register(app: typer.Typer) -> None:
    @app.command()
    @connection_options(endpoints=False, json=False, timeout=None)
    def inspect(
        what: Annotated[What, typer.Argument(help="which report (default: all)")] = What.all,
        address: Annotated[
            str, typer.Option("--address", "-a", help="any node's HTTP host:port")
        ] = DEFAULT_ADDRESS,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
        prefix: Annotated[str, typer.Option(help="data: only keys with this prefix")] = "",
        limit: Annotated[int, typer.Option(help="data: most keys per node")] = 1000,
        node: Annotated[str | None, typer.Option(help="raft: which node's log")] = None,
        start: Annotated[int | None, typer.Option("--from", help="raft: first index")] = None,
        log_limit: Annotated[int, typer.Option("--entries", help="raft: entries shown")] = 20,
        data_dir: Annotated[
            Path | None, typer.Option("--data-dir", help="raft: read this node dir offline")
        ] = None,
        *,
        conn: Connection,
    ) -> None:
        """Inspect a running cluster: status, data side by side, Raft log, round-trip test."""
        opts = {
            "prefix": prefix,
            "limit": limit,
            "node": node,
            "start": start,
            "log_limit": log_limit,
        }
        if what is What.all and data_dir is not None:
            what = What.raft  # an offline look has only the log to show
        try:
            reports = _collect(what, address, opts, data_dir, conn)
        except (InspectError, OfflineError) as exc:
            print(f"raftkv inspect: {exc}", file=sys.stderr)
            raise typer.Exit(2) from None
        if as_json:
            body = reports if what is What.all else reports[what.value]
            sys.stdout.write(msgspec.json.format(msgspec.json.encode(body)).decode() + "\n")
        else:
            console = Console()
            drawers = {
                "status": render.render_status,
                "data": render.render_data,
                "raft": render.render_raft,
                "test": render.render_test,
            }
            for kind, report in reports.items():
                drawers[kind](console, report)
                console.print()
        raise typer.Exit(1 if failed(reports) else 0)
