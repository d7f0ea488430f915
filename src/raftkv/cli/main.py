"""The `raftkv` command. Subcommands live in sibling modules, each exposing `register(app)`.

Rules:
- `app` is the full command (every subcommand registered); it is built on first use, so
  `from raftkv.cli.main import app` works as before.
- `main()` (the console script) builds only what the invoked subcommand needs when that is one
  of the key-value commands (`put`, `get`, `del`, `ls`, `txn`): those are typed by people and by
  shell loops, and importing every other subcommand (the server runtime, benchmarks, chaos)
  tripled their start-up time. Anything else, `--help` included, gets the full command.
"""

from __future__ import annotations

import functools
import sys
from typing import Final

import typer

KV_COMMANDS: Final = frozenset({"put", "get", "del", "ls", "txn"})


def _new_app() -> typer.Typer:
    app = typer.Typer(
        no_args_is_help=True, add_completion=False, help="raftkv: a Raft key-value store"
    )

    @app.callback()
    def _root() -> None:
        """raftkv: a distributed, strongly consistent key-value store on Raft."""

    return app


@functools.cache
def build_app() -> typer.Typer:
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

    app = _new_app()
    serve.register(app)
    inspect_cmd.register(app)
    bench_cmd.register(app)
    sim_cmd.register(app)
    chaos_cmd.register(app)
    certs.register(app)
    kv_cmd.register(app)
    member_cmd.register(app)
    snapshot_cmd.register(app)
    return app


def _kv_app() -> typer.Typer:
    from raftkv.cli import kv_cmd

    app = _new_app()
    kv_cmd.register(app)
    return app


def __getattr__(name: str) -> object:
    if name == "app":
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    (_kv_app() if command in KV_COMMANDS else build_app())()


if __name__ == "__main__":  # python -m raftkv.cli.main (bench/clusters.py falls back to it)
    main()
