"""`raftkv snapshot save|status|restore`: backups and disaster recovery (docs/operations.md).

Rules: the work is in `raftkv.ops.backup` (download, checks) and `raftkv.ops.recovery` (seeding
a data directory); this module parses flags and prints a short summary, or the facts as JSON
with `--json`. Exit codes: 0 done; 1 the cluster could not give a snapshot or the file is not a
valid one; 2 misuse (bad flags, a data directory that is not empty). Nothing is left at FILE or
in the data directory after a failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from raftkv.cli.connection import Connection, connection_options
from raftkv.ops.backup import BackupError, SnapshotFacts, check_sidecar, read_facts, save_snapshot
from raftkv.ops.recovery import RecoveryError, parse_initial_cluster, restore_snapshot

snapshot_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Back up a running cluster to a file, and seed a new cluster from one.",
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the facts as JSON")]


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _print_facts(facts: SnapshotFacts, as_json: bool, verb: str) -> None:
    if as_json:
        print(json.dumps(facts.to_json(), indent=2))
        return
    print(f"{verb} {facts.file}")
    print(f"  revision {facts.revision}, index {facts.index}, term {facts.term}")
    print(f"  {facts.records} records, {facts.size} bytes")
    print(f"  sha256 {facts.sha256}")
    made_by = f" (made by {facts.node})" if facts.node else ""
    print(f"  voters {', '.join(facts.voters) or '-'}{made_by}")


@snapshot_app.command("save")
@connection_options(timeout=None)
def save(
    file: Annotated[Path, typer.Argument(help="Where to write the snapshot")],
    *,
    conn: Connection,
) -> None:
    """Save a consistent snapshot of the cluster (from its leader) to FILE, plus FILE.sha256."""
    as_json = conn.as_json
    try:
        options = conn.options()
    except (ValueError, OSError) as exc:
        _say(f"raftkv snapshot save: {exc}")
        raise typer.Exit(2) from None
    if file.exists():
        _say(f"raftkv snapshot save: {file} exists; choose a new file name")
        raise typer.Exit(2)
    try:
        facts = save_snapshot(file, options, say=_say)
    except (BackupError, OSError) as exc:
        _say(f"raftkv snapshot save: {exc}")
        raise typer.Exit(1) from None
    _print_facts(facts, as_json, "saved")


@snapshot_app.command("status")
def status(
    file: Annotated[Path, typer.Argument(help="A snapshot file")],
    as_json: JsonOpt = False,
) -> None:
    """Check a snapshot file fully (every frame, FILE.sha256 if present) and print its facts."""
    try:
        facts = read_facts(file)
        check_sidecar(file, facts.sha256)
    except BackupError as exc:
        _say(f"raftkv snapshot status: {exc}")
        raise typer.Exit(1) from None
    _print_facts(facts, as_json, "valid")


@snapshot_app.command("restore")
def restore(
    file: Annotated[Path, typer.Argument(help="A snapshot saved by `raftkv snapshot save`")],
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Data root; the node's directory is <root>/<id>")
    ],
    node_id: Annotated[str, typer.Option("--node-id", help="The node to seed")],
    initial_cluster: Annotated[
        str,
        typer.Option(
            "--initial-cluster", help="Every member of the new cluster: id=host:port,... (Raft)"
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Seed <data-dir>/<node-id> of a NEW cluster from FILE (run once per member, same FILE)."""
    try:
        members = parse_initial_cluster(initial_cluster)
        done = restore_snapshot(file, data_dir, node_id, members)
    except RecoveryError as exc:
        _say(f"raftkv snapshot restore: {exc}")
        raise typer.Exit(2 if exc.misuse else 1) from None
    report = {
        "node_dir": str(done.node_dir),
        "index": done.index,
        "term": done.term,
        "voters": list(done.voters),
    }
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"restored {file} into {done.node_dir}")
        print(f"  index {done.index}, term {done.term}, voters {', '.join(done.voters)}")


def register(app: typer.Typer) -> None:
    app.add_typer(snapshot_app, name="snapshot")
