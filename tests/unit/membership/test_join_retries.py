"""`serve --join`'s requests wait out the cluster's transient refusals (no leader, a timeout,
another membership change in progress) and stop at once on a real refusal."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from raftkv.server import joining
from raftkv.server.config import ConfigError


class Scripted:
    """An HTTP server answering each POST with the next scripted (status, code)."""

    def __init__(self, answers: list[tuple[int, str | None]]) -> None:
        self.answers = answers
        self.posts = 0
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                script.posts += 1
                status, code = script.answers.pop(0)
                doc = (
                    {"member": {"id": "node-4"}} if code is None else {"error": code, "code": code}
                )
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cluster/members"


@pytest.fixture
def scripted() -> Iterator[list[Scripted]]:
    made: list[Scripted] = []
    yield made
    for s in made:
        s.server.shutdown()
        s.server.server_close()


def serve(made: list[Scripted], answers: list[tuple[int, str | None]]) -> Scripted:
    s = Scripted(answers)
    threading.Thread(target=s.server.serve_forever, daemon=True).start()
    made.append(s)
    return s


def test_a_join_waits_while_another_change_is_in_progress(scripted: list[Scripted]) -> None:
    # The node that joined just before is being promoted: the add is refused with a 409 for a
    # moment; a one-command join must not give up (it used to exit 2 here).
    s = serve(scripted, [(409, "change_in_progress"), (503, "no_leader"), (201, None)])
    doc = joining._call("POST", s.url, {"id": "node-4"})
    assert doc == {"member": {"id": "node-4"}} and s.posts == 3


def test_a_real_refusal_stops_the_join_at_once(scripted: list[Scripted]) -> None:
    s = serve(scripted, [(400, "duplicate_member"), (201, None)])
    with pytest.raises(ConfigError, match="400 duplicate_member"):
        joining._call("POST", s.url, {"id": "node-4"})
    assert s.posts == 1


def test_a_busy_cluster_is_waited_for_until_the_deadline_only(
    scripted: list[Scripted], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(joining, "JOIN_DEADLINE_S", 0.8)
    s = serve(scripted, [(409, "change_in_progress")] * 50)
    with pytest.raises(ConfigError, match="409 change_in_progress"):
        joining._call("POST", s.url, {"id": "node-4"})
    assert 1 <= s.posts < 5
