"""The console script builds only the invoked subcommand's module (raftkv.cli.main)."""

from __future__ import annotations

import subprocess
import sys

import typer

from raftkv.cli.main import COMMAND_MODULES, _app_with, build_app


def _top_level_names(app: typer.Typer) -> set[str]:
    names = {group.name for group in app.registered_groups if group.name}
    for command in app.registered_commands:
        name = command.name or (command.callback.__name__ if command.callback else None)
        assert name is not None
        names.add(name.replace("_", "-"))
    return names


def test_every_registered_command_is_routed_to_its_module() -> None:
    assert _top_level_names(build_app()) == set(COMMAND_MODULES)


def test_each_module_registers_exactly_the_names_routed_to_it() -> None:
    for module in set(COMMAND_MODULES.values()):
        routed = {name for name, owner in COMMAND_MODULES.items() if owner == module}
        assert _top_level_names(_app_with([module])) == routed, module


def test_a_key_value_command_does_not_import_the_server_runtime() -> None:
    probe = (
        "import sys; from raftkv.cli import main as m; "
        "sys.argv = ['raftkv', 'get', '--help']\n"
        "try:\n    m.main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(n for n in sys.modules if n.startswith(('raftkv.runtime', 'raftkv.bench'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"
