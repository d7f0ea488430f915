"""Output of `raftkv put|get|del|ls|txn`: lines and tables for people, JSON for scripts.

Rules:
- Human output fits the terminal (80 columns when not a terminal): long keys and values are
  cut with an ellipsis, never wrapped into unreadable tables; control characters in text are
  shown escaped, binary values as `<binary, N bytes>`.
- JSON output is one document per command with the result's fields; a binary value is base64
  with `"value_encoding": "base64"`, as the HTTP API writes it.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from raftkv.client import DeleteRangeResult, DeleteResult, KeyValue, PutResult, RangeResult
from raftkv.client.types import (
    DeleteOpResult,
    GetOpResult,
    OpResult,
    PutOpResult,
    TxnResult,
)


def to_json(doc: object) -> str:
    return msgspec.json.encode(doc).decode() + "\n"


def item_doc(item: KeyValue) -> dict[str, Any]:
    doc: dict[str, Any] = {"key": item.key}
    if isinstance(item.value, bytes):
        doc["value"] = base64.b64encode(item.value).decode("ascii")
        doc["value_encoding"] = "base64"
    elif item.value is not None:
        doc["value"] = item.value
    doc.update(
        create_revision=item.create_revision,
        mod_revision=item.mod_revision,
        version=item.version,
    )
    return doc


def shown(value: str | bytes | None) -> str:
    """A value on one line for people."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return f"<binary, {len(value)} bytes>"
    return value.encode("unicode_escape").decode("ascii") if not value.isprintable() else value


def _revision(revision: int) -> str:
    return f" (revision {revision})" if revision else ""


def print_put(console: Console, result: PutResult, as_json: bool) -> None:
    if as_json:
        console.file.write(to_json(result))
        return
    console.print(Text(f"OK {result.key}{_revision(result.revision)}", no_wrap=True))


def print_item(console: Console, item: KeyValue, as_json: bool) -> None:
    if as_json:
        console.file.write(to_json(item_doc(item)))
        return
    rows = [("key", shown(item.key)), ("value", shown(item.value))]
    if item.mod_revision:
        rows.append(
            (
                "revision",
                f"modified {item.mod_revision}, created {item.create_revision}, "
                f"version {item.version}",
            )
        )
    for label, text in rows:
        line = Text(f"{label:<10}", style="bold")
        line.append(text)
        console.print(line, overflow="fold")


def print_deleted(console: Console, result: DeleteResult, as_json: bool) -> None:
    if as_json:
        console.file.write(to_json(result))
        return
    console.print(Text(f"deleted {result.key}{_revision(result.revision)}", no_wrap=True))


def print_deleted_range(
    console: Console, prefix: str, result: DeleteRangeResult, as_json: bool
) -> None:
    if as_json:
        console.file.write(to_json(result))
        return
    keys = "key" if result.deleted == 1 else "keys"
    line = f"deleted {result.deleted} {keys} with prefix {prefix!r}{_revision(result.revision)}"
    console.print(Text(line))


def print_count(console: Console, page: RangeResult, as_json: bool) -> None:
    if as_json:
        console.file.write(to_json({"count": page.count, "revision": page.revision}))
        return
    console.print(f"{page.count} keys{_revision(page.revision)}")


def print_listing(
    console: Console,
    items: Sequence[KeyValue],
    count: int,
    revision: int | None,
    as_json: bool,
) -> None:
    if as_json:
        doc: dict[str, Any] = {"items": [item_doc(i) for i in items], "count": count}
        if revision is not None:
            doc["revision"] = revision
        console.file.write(to_json(doc))
        return
    keys_only = all(i.value is None for i in items) and bool(items)
    with_revisions = any(i.mod_revision for i in items)
    table = Table(box=None, pad_edge=False, header_style="bold")
    # Fixed room for the numbers, then the key gets at most ~40 % and the value the rest.
    numbers = 0
    if with_revisions:
        mod_w = max(3, *(len(str(i.mod_revision)) for i in items))
        ver_w = max(3, *(len(str(i.version)) for i in items))
        numbers = mod_w + ver_w + 4
    room = max(20, console.width - numbers - (2 if not keys_only else 0))
    key_w = min(
        max(len(shown(i.key)) for i in items) if items else 3,
        room if keys_only else max(8, room * 2 // 5),
    )
    table.add_column("KEY", no_wrap=True, overflow="ellipsis", max_width=key_w, min_width=3)
    if not keys_only:
        table.add_column("VALUE", no_wrap=True, overflow="ellipsis", max_width=room - key_w)
    if with_revisions:
        table.add_column("MOD", justify="right", no_wrap=True, min_width=mod_w)
        table.add_column("VER", justify="right", no_wrap=True, min_width=ver_w)
    for item in items:
        row: list[Text | str] = [Text(shown(item.key))]
        if not keys_only:
            row.append(Text(shown(item.value)))
        if with_revisions:
            row += [str(item.mod_revision), str(item.version)]
        table.add_row(*row)
    if items:
        console.print(table)
    more = f" of {count}" if count > len(items) else ""
    noun = "key" if count == 1 else "keys"
    console.print(f"{len(items)}{more} {noun}{_revision(revision or 0)}", style="dim")


def op_doc(result: OpResult) -> dict[str, Any]:
    match result:
        case GetOpResult(items=items, count=count):
            return {"op": "get", "items": [item_doc(i) for i in items], "count": count}
        case PutOpResult(revision=revision):
            return {"op": "put", "revision": revision}
        case DeleteOpResult(deleted=deleted):
            return {"op": "delete", "deleted": deleted}


def _op_line(result: OpResult) -> str:
    match result:
        case GetOpResult(items=[]):
            return "get: not found"
        case GetOpResult(items=items):
            return "get: " + ", ".join(f"{i.key}={shown(i.value)}" for i in items)
        case PutOpResult(revision=revision):
            return f"put{_revision(revision)}"
        case DeleteOpResult(deleted=deleted):
            return f"delete: {deleted} deleted"


def print_txn(console: Console, result: TxnResult, as_json: bool) -> None:
    if as_json:
        doc = {
            "succeeded": result.succeeded,
            "revision": result.revision,
            "results": [op_doc(r) for r in result.results],
        }
        console.file.write(to_json(doc))
        return
    if result.succeeded:
        console.print(f"SUCCEEDED: compares held, success ops ran{_revision(result.revision)}")
    else:
        console.print(f"FAILED: compares false, failure ops ran{_revision(result.revision)}")
    for n, op_result in enumerate(result.results, 1):
        console.print(Text(f"{n}. {_op_line(op_result)}", no_wrap=True, overflow="ellipsis"))
