"""`raftkv put|get|del|ls|txn` output: 80-column tables for people, JSON for scripts."""

from __future__ import annotations

import io
import json

from rich.console import Console

from raftkv.cli import kv_render
from raftkv.client import KeyValue, PutResult
from raftkv.client.types import DeleteOpResult, GetOpResult, PutOpResult, TxnResult


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=80, color_system=None, highlight=False), out


def test_listing_fits_80_columns_whatever_the_lengths() -> None:
    items = [
        KeyValue("k" * 200, "v" * 500, 1, 9, 3),
        KeyValue("short", "line one\nline two", 2, 10, 1),
        KeyValue("bin", b"\x00" * 1000, 3, 11, 1),
    ]
    c, out = console()
    kv_render.print_listing(c, items, 3, 11, as_json=False)
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    text = out.getvalue()
    assert "KEY" in text and "MOD" in text and "<binary, 1000 bytes>" in text
    assert "line one\\nline two" in text  # a newline never breaks the table
    assert lines[-1].strip() == "3 keys (revision 11)"


def test_keys_only_listing_has_no_value_column() -> None:
    c, out = console()
    kv_render.print_listing(c, [KeyValue("a", None), KeyValue("b", None)], 5, None, False)
    assert "VALUE" not in out.getvalue()
    assert out.getvalue().splitlines()[-1].strip() == "2 of 5 keys"


def test_json_keeps_binary_values_as_the_api_does() -> None:
    c, out = console()
    kv_render.print_item(c, KeyValue("k", b"\xff\x00", 1, 2, 1), as_json=True)
    assert json.loads(out.getvalue()) == {
        "key": "k",
        "value": "/wA=",
        "value_encoding": "base64",
        "create_revision": 1,
        "mod_revision": 2,
        "version": 1,
    }


def test_put_and_txn_lines() -> None:
    c, out = console()
    kv_render.print_put(c, PutResult("k", 12), as_json=False)
    results = [GetOpResult([KeyValue("k", "v")], 1), PutOpResult(13), DeleteOpResult(0)]
    kv_render.print_txn(c, TxnResult(False, 13, results), as_json=False)
    lines = out.getvalue().splitlines()
    assert lines[0] == "OK k (revision 12)"
    assert lines[1].startswith("FAILED") and "(revision 13)" in lines[1]
    assert lines[2:] == ["1. get: k=v", "2. put (revision 13)", "3. delete: 0 deleted"]
