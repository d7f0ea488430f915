"""The pure layers (raft/, kv/, check/, sim/) must not do I/O, read clocks or use global randomness.

Parses the sources with `ast`, so a banned import or call fails CI even if never executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "raftkv"
PURE = ["raft", "kv", "check", "sim"]
BANNED_MODULES = {
    "asyncio",
    "socket",
    "os",
    "pathlib",
    "time",
    "threading",
    "multiprocessing",
    "subprocess",
    "pickle",
    "uuid",
    "datetime",
    "selectors",
    "shutil",
    "tempfile",
    "sqlite3",
    "lmdb",
}
# The simulator's CLI sweep may use multiprocessing, but it lives in cli/, not sim/.
BANNED_CALLS = {"open", "input", "print", "exec", "eval", "breakpoint", "id", "hash"}
BANNED_RANDOM_ATTRS = {
    "random",
    "randint",
    "randrange",
    "choice",
    "choices",
    "shuffle",
    "sample",
    "uniform",
    "seed",
    "getrandbits",
}


def _files() -> list[Path]:
    return sorted(p for pkg in PURE for p in (SRC / pkg).rglob("*.py"))


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in BANNED_MODULES:
                    out.append(f"{path}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in BANNED_MODULES:
                out.append(f"{path}:{node.lineno}: from {node.module} import ...")
            if root == "random" and any(a.name != "Random" for a in node.names):
                out.append(f"{path}:{node.lineno}: from random import (only Random allowed)")
        elif isinstance(node, ast.Call):
            fn = node.func
            if isinstance(fn, ast.Name) and fn.id in BANNED_CALLS:
                out.append(f"{path}:{node.lineno}: call {fn.id}()")
            if (
                isinstance(fn, ast.Attribute)
                and isinstance(fn.value, ast.Name)
                and fn.value.id == "random"
                and fn.attr in BANNED_RANDOM_ATTRS
            ):
                out.append(f"{path}:{node.lineno}: module-level random.{fn.attr}()")
    return out


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(SRC)))
def test_pure_module(path: Path) -> None:
    assert _violations(path) == []


def test_checker_detects_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nimport random\nx = random.random()\nopen('f')\n")
    found = _violations(bad)
    assert len(found) == 3, found
