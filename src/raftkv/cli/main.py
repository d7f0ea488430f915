"""The `raftkv` command. Subcommands live in sibling modules, each exposing `register(app)`."""

from __future__ import annotations

import typer

from raftkv.cli import (
    bench_cmd,
    certs,
    chaos_cmd,
    inspect_cmd,
    kv_cmd,
    member_cmd,
    serve,
    sim_cmd,
    snapshot_cmd,
)

app = typer.Typer(no_args_is_help=True, add_completion=False, help="raftkv: a Raft key-value store")


@app.callback()
def _root() -> None:
    """raftkv: a distributed, strongly consistent key-value store on Raft."""


serve.register(app)
inspect_cmd.register(app)
bench_cmd.register(app)
sim_cmd.register(app)
chaos_cmd.register(app)
certs.register(app)
kv_cmd.register(app)
member_cmd.register(app)
snapshot_cmd.register(app)


def main() -> None:
    app()
