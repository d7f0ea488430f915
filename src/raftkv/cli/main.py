"""The `raftkv` command. Subcommands live in sibling modules, each exposing `register(app)`.

Rules:
- `app` is the full command (every subcommand registered); it is built on first use, so
  `from raftkv.cli.main import app` works as before.
- `main()` (the console script) builds only the module of the invoked subcommand
  (`COMMAND_MODULES`): importing every subcommand (the server runtime, benchmarks with aiohttp's
  client, chaos) cost about 2 s of CPU per invocation, paid by every `raftkv put` in a shell loop
  and by every node a test starts. `--help`, no argument or an unknown name gets the full command
  (an unknown name then gets typer's own "No such command" error).
- Every name a module registers must be listed in `COMMAND_MODULES`; a test checks it.
"""

from __future__ import annotations

import functools
import importlib
import sys
from typing import Final

import typer

# top-level command name -> the sibling module whose `register(app)` adds it
COMMAND_MODULES: Final[dict[str, str]] = {
    "serve": "serve",
    "inspect": "inspect_cmd",
    "bench": "bench_cmd",
    "sim": "sim_cmd",
    "chaos": "chaos_cmd",
    "certs": "certs",
    "put": "kv_cmd",
    "get": "kv_cmd",
    "del": "kv_cmd",
    "ls": "kv_cmd",
    "txn": "kv_cmd",
    "member": "member_cmd",
    "leader": "member_cmd",
    "snapshot": "snapshot_cmd",
}


def _new_app() -> typer.Typer:
    app = typer.Typer(
        no_args_is_help=True, add_completion=False, help="raftkv: a Raft key-value store"
    )

    @app.callback()
    def _root() -> None:
        """raftkv: a distributed, strongly consistent key-value store on Raft."""

    return app


def _app_with(modules: list[str]) -> typer.Typer:
    app = _new_app()
    for module in modules:
        importlib.import_module(f"raftkv.cli.{module}").register(app)
    return app


@functools.cache
def build_app() -> typer.Typer:
    # dict.fromkeys: each module once, in the order of first mention (the order of --help)
    return _app_with(list(dict.fromkeys(COMMAND_MODULES.values())))


def __getattr__(name: str) -> object:
    if name == "app":
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    module = COMMAND_MODULES.get(command)
    (build_app() if module is None else _app_with([module]))()


if __name__ == "__main__":  # python -m raftkv.cli.main (bench/clusters.py falls back to it)
    main()
