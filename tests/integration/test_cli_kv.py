"""`raftkv put|get|del|ls|txn` against real nodes: output, --json, exit codes.

The commands run in-process (typer's CliRunner: same argument parsing and output streams,
without paying the interpreter start and imports per command); one test runs the real console
script to cover the process boundary.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

from typer.testing import CliRunner

from raftkv.cli.main import app
from tests.integration.cluster import Cluster, free_port, raftkv_executable


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: bytes
    stderr: bytes


def raftkv(c: Cluster | None, *args: str, stdin: bytes = b"", endpoints: str | None = None) -> Done:
    if endpoints is None:
        assert c is not None
        endpoints = ",".join(n.http for n in c.nodes.values())
    result = CliRunner().invoke(app, [*args, "--endpoints", endpoints], input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Done(result.exit_code, result.stdout_bytes, result.stderr_bytes)


def test_the_console_script(shared_cluster: Cluster) -> None:
    endpoints = ",".join(n.http for n in shared_cluster.nodes.values())
    exe = str(raftkv_executable())
    put = subprocess.run(
        [exe, "put", "cli:proc", "--endpoints", endpoints, "--json"],
        input=b"from stdin",
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout)["key"] == "cli:proc"
    get = subprocess.run(
        [exe, "get", "cli:proc", "--raw", "-e", endpoints],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert (get.returncode, get.stdout) == (0, b"from stdin")


def test_put_get_del_round_trip(shared_cluster: Cluster) -> None:
    done = raftkv(shared_cluster, "put", "cli:greeting", "hello world")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().startswith("OK cli:greeting")

    done = raftkv(shared_cluster, "get", "cli:greeting")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0].split() == ["key", "cli:greeting"]
    assert lines[1].split(maxsplit=1) == ["value", "hello world"]

    done = raftkv(shared_cluster, "get", "cli:greeting", "--json", "--consistency", "stale")
    doc = json.loads(done.stdout)
    assert doc["key"] == "cli:greeting" and doc["value"] == "hello world"

    assert raftkv(shared_cluster, "get", "cli:greeting", "--raw").stdout == b"hello world"

    done = raftkv(shared_cluster, "del", "cli:greeting", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["key"] == "cli:greeting"

    done = raftkv(shared_cluster, "get", "cli:greeting", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["code"] == "key_not_found"
    assert b"key not found" in done.stderr


def test_value_from_stdin(shared_cluster: Cluster) -> None:
    text = "line one\nline two\n"
    assert raftkv(shared_cluster, "put", "cli:stdin", stdin=text.encode()).returncode == 0
    assert raftkv(shared_cluster, "get", "cli:stdin", "--raw").stdout.decode() == text


def test_usage_and_unavailable_exit_codes(shared_cluster: Cluster) -> None:
    done = raftkv(shared_cluster, "del")  # neither KEY nor --prefix
    assert done.returncode == 2 and b"KEY or --prefix" in done.stderr
    done = raftkv(None, "get", "k", endpoints="no-port")
    assert done.returncode == 2 and b"bad connection options" in done.stderr
    dead = f"127.0.0.1:{free_port('127.0.0.1', set())}"
    done = raftkv(None, "get", "k", "--timeout", "1", endpoints=dead)
    assert done.returncode == 3 and b"no node answered" in done.stderr


def test_cas_ls_txn_and_prefix_delete(shared_cluster: Cluster) -> None:
    c = shared_cluster
    rev = json.loads(raftkv(c, "put", "cli:ls:a", "alpha", "--json").stdout)["revision"]
    assert raftkv(c, "put", "cli:ls:b", "beta").returncode == 0
    done = raftkv(c, "put", "cli:ls:a", "again", "--if-match", str(rev - 1))
    assert done.returncode == 1 and b"precondition" in done.stderr
    assert raftkv(c, "put", "cli:ls:a", "again", "--if-match", str(rev)).returncode == 0
    assert raftkv(c, "put", "cli:ls:a", "x", "--if-absent").returncode == 1

    done = raftkv(c, "ls", "cli:ls:")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0].split() == ["KEY", "VALUE", "MOD", "VER"]
    assert lines[1].split()[:2] == ["cli:ls:a", "again"] and lines[1].split()[3] == "2"
    assert lines[2].split()[:2] == ["cli:ls:b", "beta"]
    assert lines[-1].startswith("2 keys")
    assert all(len(line) <= 80 for line in lines)
    doc = json.loads(raftkv(c, "ls", "cli:ls:", "--keys-only", "--limit", "1", "--json").stdout)
    assert [i["key"] for i in doc["items"]] == ["cli:ls:a"] and doc["count"] == 2
    assert "value" not in doc["items"][0]

    txn = {
        "compare": [{"key": "cli:ls:b", "target": "value", "op": "==", "value": "beta"}],
        "success": [
            {"op": "put", "key": "cli:ls:c", "value": "gamma"},
            {"op": "get", "key": "cli:ls:b"},
        ],
    }
    done = raftkv(c, "txn", "--json", stdin=json.dumps(txn).encode())
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["succeeded"] and doc["results"][1]["items"][0]["value"] == "beta"
    done = raftkv(
        c,
        "txn",
        stdin=json.dumps({**txn, "compare": [{**txn["compare"][0], "value": "no"}]}).encode(),
    )
    assert done.returncode == 1 and done.stdout.decode().startswith("FAILED")
    assert raftkv(c, "txn", stdin=b'{"compare": 1}').returncode == 2

    done = raftkv(c, "del", "--prefix", "cli:ls:", "--json")
    assert json.loads(done.stdout)["deleted"] == 3
    assert raftkv(c, "ls", "cli:ls:", "--count-only").stdout.decode().startswith("0 keys")


def test_binary_values(shared_cluster: Cluster) -> None:
    blob = bytes(range(256))
    done = raftkv(shared_cluster, "put", "cli:bin", "--binary", stdin=blob)
    assert done.returncode == 0, done.stderr
    assert raftkv(shared_cluster, "get", "cli:bin", "--raw").stdout == blob
    human = raftkv(shared_cluster, "get", "cli:bin").stdout.decode()
    assert "<binary, 256 bytes>" in human
    doc = json.loads(raftkv(shared_cluster, "get", "cli:bin", "--json").stdout)
    assert doc["value_encoding"] == "base64"
    done = raftkv(shared_cluster, "put", "cli:bin2", stdin=b"\xff\xfe")
    assert done.returncode == 2 and b"--binary" in done.stderr
