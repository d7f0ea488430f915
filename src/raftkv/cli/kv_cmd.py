"""`raftkv put|get|del|ls|txn`: the key-value store from a shell, through `raftkv.client`.

Rules:
- Every command talks to `--endpoints` (comma-separated; env `RAFTKV_ENDPOINTS`; default the
  seed's three nodes) with the client's failover and exactly-once rules; TLS (`--cacert`,
  `--cert`, `--key`, `--insecure`) and auth (`--user NAME[:PASSWORD]`, password prompted when
  missing or taken from `RAFTKV_PASSWORD`; or `--token` / `RAFTKV_TOKEN`) as the client has them.
- Output: tables and lines for people (`kv_render`, fitting 80 columns), `--json` for scripts:
  one JSON document on stdout, the result's fields (binary values base64 with
  `"value_encoding": "base64"`, as the HTTP API does).
- Exit status: 0 done; 1 the answer is "no" (key not found, a condition failed, a txn's
  compares were false); 2 bad usage or input; 3 anything else (cluster unavailable, outcome
  unknown, auth ...). Errors go to stderr (and, with --json, as `{"error", "code", ...}` to
  stdout too).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from raftkv.cli import kv_render
from raftkv.cli.connection import Connection, connection_options
from raftkv.client import (
    BadRequest,
    Client,
    KeyValue,
    NotFound,
    OutcomeUnknown,
    PreconditionFailed,
    RaftkvError,
    TxnResult,
    Unavailable,
)
from raftkv.client.txn_codec import parse_txn
from raftkv.client.types import Value

T = TypeVar("T")

# A command's session only has to outlive its own retries: a short TTL keeps a shell loop of
# writes from filling the cluster's session table (sessions beyond its cap evict the idlest).
CLI_SESSION_TTL_S = 15
EXIT_NO = 1
EXIT_USAGE = 2
EXIT_ERROR = 3

Revision = Annotated[int | None, typer.Option(help="Read as of this revision")]
Consistency = Annotated[
    str, typer.Option(help="linearizable (default), lease (leader lease, docs/api.md) or stale")
]
MinRevision = Annotated[
    int | None, typer.Option("--min-revision", help="Wait until the node has applied this")
]
IfMatch = Annotated[
    int | None, typer.Option("--if-match", help="Only if the key's mod_revision is this")
]


def _client(conn: Connection) -> Client:
    try:
        return conn.client(session_ttl=CLI_SESSION_TTL_S)
    except (ValueError, OSError) as exc:  # bad endpoint, unreadable certificate ...
        _fail(conn, EXIT_USAGE, f"bad connection options: {exc}")


def _fail(conn: Connection, code: int, message: str, doc: dict[str, Any] | None = None) -> NoReturn:
    if conn.as_json:
        sys.stdout.write(kv_render.to_json(doc or {"error": message, "code": "cli_error"}))
    print(f"raftkv: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _run(conn: Connection, op: Callable[[Client], T]) -> T:
    """Run `op` with a client; map client errors to messages and exit codes."""
    try:
        with _client(conn) as kv:
            return op(kv)
    except RaftkvError as exc:
        doc = {"error": exc.message, "code": exc.code or type(exc).__name__, **exc.details}
        if isinstance(exc, NotFound | PreconditionFailed):
            status = EXIT_NO
        elif isinstance(exc, BadRequest):
            status = EXIT_USAGE
        else:
            status = EXIT_ERROR
        hint = conn.https_hint() if isinstance(exc, Unavailable | OutcomeUnknown) else ""
        _fail(conn, status, str(exc) + hint, doc)
    except ValueError as exc:  # bad arguments caught by the client before sending
        _fail(conn, EXIT_USAGE, str(exc))


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _read_value(conn: Connection, value: str | None, file: Path | None, binary: bool) -> Value:
    if value is not None and file is not None:
        _fail(conn, EXIT_USAGE, "give the value as an argument or with --file, not both")
    if value is not None:
        return value.encode() if binary else value
    try:
        data = sys.stdin.buffer.read() if file is None or str(file) == "-" else file.read_bytes()
    except OSError as exc:
        _fail(conn, EXIT_USAGE, f"cannot read the value: {exc}")
    if binary:
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        _fail(conn, EXIT_USAGE, "the value is not UTF-8 text; use --binary to store bytes")


def register(app: typer.Typer) -> None:
    @app.command()
    @connection_options()
    def put(
        key: Annotated[str, typer.Argument(help="The key")],
        value: Annotated[
            str | None, typer.Argument(help="The value (default: read from --file or stdin)")
        ] = None,
        file: Annotated[
            Path | None,
            typer.Option("--file", "-f", help="Read the value from a file ('-': stdin)"),
        ] = None,
        binary: Annotated[
            bool, typer.Option("--binary", help="Store the value as bytes (octet-stream)")
        ] = False,
        if_match: IfMatch = None,
        if_absent: Annotated[
            bool, typer.Option("--if-absent", help="Only if the key does not exist")
        ] = False,
        *,
        conn: Connection,
    ) -> None:
        """Store a value (optionally only if unchanged or absent: compare-and-set)."""
        as_json = conn.as_json
        data = _read_value(conn, value, file, binary)
        result = _run(conn, lambda kv: kv.put(key, data, if_match=if_match, if_absent=if_absent))
        kv_render.print_put(_console(), result, as_json)

    @app.command()
    @connection_options()
    def get(
        key: Annotated[str, typer.Argument(help="The key")],
        revision: Revision = None,
        consistency: Consistency = "linearizable",
        min_revision: MinRevision = None,
        raw: Annotated[
            bool, typer.Option("--raw", "-r", help="Print only the value, as stored")
        ] = False,
        *,
        conn: Connection,
    ) -> None:
        """Read a key: its value, revisions and version."""
        as_json = conn.as_json
        item = _run(
            conn,
            lambda kv: kv.get(
                key, revision=revision, consistency=consistency, min_revision=min_revision
            ),
        )
        if raw and not as_json:
            sys.stdout.buffer.write(item.data)
            sys.stdout.flush()
            return
        kv_render.print_item(_console(), item, as_json)

    @app.command("del")
    @connection_options()
    def delete(
        key: Annotated[str | None, typer.Argument(help="The key")] = None,
        prefix: Annotated[
            str | None, typer.Option("--prefix", help="Delete every key with this prefix")
        ] = None,
        if_match: IfMatch = None,
        *,
        conn: Connection,
    ) -> None:
        """Delete a key, or with --prefix every key under a prefix (atomically)."""
        as_json = conn.as_json
        if (key is None) == (prefix is None):
            _fail(conn, EXIT_USAGE, "give a KEY or --prefix PREFIX (one of them)")
        if prefix is not None:
            if if_match is not None:
                _fail(conn, EXIT_USAGE, "--if-match applies to one key, not a prefix")
            ranged = _run(conn, lambda kv: kv.delete_prefix(prefix))
            kv_render.print_deleted_range(_console(), prefix, ranged, as_json)
            return
        assert key is not None
        result = _run(conn, lambda kv: kv.delete(key, if_match=if_match))
        kv_render.print_deleted(_console(), result, as_json)

    @app.command()
    @connection_options()
    def ls(
        prefix: Annotated[str, typer.Argument(help="Key prefix (default: every key)")] = "",
        start: Annotated[str | None, typer.Option(help="First key of a [start, end) range")] = None,
        end: Annotated[str | None, typer.Option(help="End (exclusive) of the range")] = None,
        limit: Annotated[
            int | None, typer.Option(help="At most this many keys (default: all, paged)")
        ] = None,
        keys_only: Annotated[bool, typer.Option("--keys-only", help="Keys only")] = False,
        count_only: Annotated[bool, typer.Option("--count-only", help="Only the count")] = False,
        revision: Revision = None,
        consistency: Consistency = "linearizable",
        *,
        conn: Connection,
    ) -> None:
        """List keys with a prefix (or in a range) with values and revisions."""
        as_json = conn.as_json
        ranged = start is not None or end is not None
        if ranged and prefix:
            _fail(conn, EXIT_USAGE, "give a PREFIX or --start/--end, not both")
        if end is not None and start is None:
            start = ""
        pfx = None if ranged else prefix
        if count_only:
            page = _run(
                conn,
                lambda kv: kv.range(
                    pfx,
                    start=start,
                    end=end,
                    count_only=True,
                    revision=revision,
                    consistency=consistency,
                ),
            )
            kv_render.print_count(_console(), page, as_json)
            return
        if limit is not None:
            page = _run(
                conn,
                lambda kv: kv.range(
                    pfx,
                    start=start,
                    end=end,
                    limit=limit,
                    keys_only=keys_only,
                    revision=revision,
                    consistency=consistency,
                ),
            )
            kv_render.print_listing(_console(), page.items, page.count, page.revision, as_json)
            return

        def everything(kv: Client) -> list[KeyValue]:
            return list(
                kv.scan(
                    pfx,
                    start=start,
                    end=end,
                    keys_only=keys_only,
                    revision=revision,
                    consistency=consistency,
                )
            )

        items = _run(conn, everything)
        kv_render.print_listing(_console(), items, len(items), None, as_json)

    @app.command()
    @connection_options()
    def txn(
        file: Annotated[
            Path | None,
            typer.Argument(help="JSON {compare, success, failure} (default: stdin; '-': stdin)"),
        ] = None,
        *,
        conn: Connection,
    ) -> None:
        """Run a transaction: if every compare holds, the success ops, else the failure ops.

        Input, as POST /txn takes it: {"compare": [{"key", "target": "value" | "version" |
        "mod_revision" | "create_revision", "op": "==" | "!=" | "<" | ">", "value"}],
        "success": [{"op": "get" | "put" | "delete", "key", "value"?, "prefix"?}],
        "failure": [...]}. Exit 1 when the compares were false (the failure branch ran)."""
        as_json = conn.as_json
        try:
            raw = sys.stdin.buffer.read() if file is None or str(file) == "-" else file.read_bytes()
            request = parse_txn(raw)
        except (OSError, ValueError) as exc:
            _fail(conn, EXIT_USAGE, f"bad transaction input: {exc}")
        result: TxnResult = _run(
            conn, lambda kv: kv.txn(request.compare, request.success, request.failure)
        )
        kv_render.print_txn(_console(), result, as_json)
        if not result.succeeded:
            raise typer.Exit(EXIT_NO)
