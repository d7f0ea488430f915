"""The shared connection flags (cli/connection.py): one definition, every command gets them."""

from __future__ import annotations

import base64
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from raftkv.cli.connection import Connection, connection_options
from raftkv.cli.main import build_app

COMMANDS = (
    ["put"], ["get"], ["del"], ["ls"], ["txn"],
    ["member", "list"], ["member", "add"], ["member", "promote"], ["member", "remove"],
    ["leader", "transfer"], ["snapshot", "save"],
)  # fmt: skip
TLS_AUTH = ("--cacert", "--cert", "--key", "--insecure", "--user", "--password", "--token")


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_client_command_takes_the_same_connection_flags(command: list[str]) -> None:
    out = CliRunner().invoke(build_app(), [*command, "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--endpoints", "--json", *TLS_AUTH):
        assert flag in out, (command, flag)


@pytest.mark.parametrize("command", [["serve"], ["inspect"]], ids=" ".join)
def test_serve_and_inspect_take_tls_and_credentials(command: list[str]) -> None:
    out = CliRunner().invoke(build_app(), [*command, "--help"], env={"COLUMNS": "200"}).output
    for flag in TLS_AUTH:
        assert flag in out, (command, flag)
    assert "--endpoints" not in out


def test_the_command_receives_one_connection() -> None:
    seen: list[Connection] = []
    app = typer.Typer()

    @app.command()
    @connection_options(timeout=30.0)
    def probe(
        name: Annotated[str, typer.Argument()], *, conn: Connection
    ) -> None:  # pragma: no cover - run by typer
        seen.append(conn)

    result = CliRunner().invoke(
        app,
        ["n", "-e", "a:1,b:2", "--json", "--cacert", "ca.pem", "--user", "alice", "--password",
         "pw", "--key", "k.pem", "--cert", "c.pem"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (conn,) = seen
    assert (conn.endpoints, conn.as_json, conn.timeout) == ("a:1,b:2", True, 30.0)
    assert (str(conn.cacert), str(conn.cert), str(conn.key)) == ("ca.pem", "c.pem", "k.pem")
    assert conn.credentials() == ("alice", "pw")
    assert "pw" not in repr(conn)


def test_credentials_and_the_authorization_header() -> None:
    assert Connection(user="bob:s3:cret").credentials() == ("bob", "s3:cret")
    assert Connection(user="bob", password="x").credentials() == ("bob", "x")
    assert Connection(password="ignored").credentials() == (None, None)
    header = Connection(user="bob:pw").auth_header()
    assert header == "Basic " + base64.b64encode(b"bob:pw").decode()
    assert Connection(token="t0k").auth_header() == "Bearer t0k"
    assert Connection().auth_header() is None
    with pytest.raises(ValueError, match="either --token or --user"):
        Connection(user="bob:pw", token="t").auth_header()
    with pytest.raises(ValueError, match="http:// address"):
        Connection(insecure=True).ssl_context(https=False)
