"""A plain-HTTP command against a node that hangs up (as an HTTPS port does) hints at --cacert.

A new user who started `./scripts/start-cluster.sh --tls` and then runs `raftkv get` or
`raftkv inspect` without `--cacert` used to see only "connection reset" / "Server disconnected".
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from raftkv.cli.main import build_app

HINT = "--cacert"


@pytest.fixture
def hang_up_port() -> Iterator[int]:
    """A listener on 127.0.0.1 that accepts every connection and closes it at once."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        srv.close()


def test_get_over_plain_http_hints_at_https(hang_up_port: int) -> None:
    args = ["get", "k", "-e", f"127.0.0.1:{hang_up_port}", "--timeout", "0.5"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 3, result.output
    assert HINT in result.stderr


def test_get_with_tls_options_gives_no_https_hint(hang_up_port: int) -> None:
    args = ["get", "k", "-e", f"https://127.0.0.1:{hang_up_port}", "--timeout", "0.5"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 3, result.output
    assert HINT not in result.stderr


def test_inspect_over_plain_http_hints_at_https(hang_up_port: int) -> None:
    args = ["inspect", "status", "--address", f"127.0.0.1:{hang_up_port}"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 2, result.output
    assert HINT in result.stderr
