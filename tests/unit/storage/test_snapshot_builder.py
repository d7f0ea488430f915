"""The builder process (storage/snapshot_builder.py) against a live LMDB writer.

- A snapshot is ONE instant: writes applied while the builder is halfway through its file
  (paused by its test hook) are in neither its header nor its records; it installs to exactly
  the state as of its header's index.
- The builder ends at EOF on its requests, and when its parent process dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from raftkv.raft.types import ConfState, NodeId
from raftkv.storage.memory import MemoryState
from raftkv.storage.snapshot_builder import (
    PAUSE_ENV,
    BuildRequest,
    reply_codec,
    request_codec,
)
from raftkv.storage.snapshot_file import verify_snapshot_file
from raftkv.storage.state_lmdb import LmdbState
from tests.unit.storage.test_state_machines import delete, put

CONF = ConfState(voters=(NodeId("n1"), NodeId("n2"), NodeId("n3")))


def wait_for_file(path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)  # a file another process creates: nothing to await on


def builder(state_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A builder whose parent is this process (it exits at once if its parent differs)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "raftkv.storage.snapshot_builder",
            str(state_dir),
            str(os.getpid()),
            "0",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, **env},
    )


def test_a_snapshot_is_one_instant_although_writes_go_on_while_it_is_written(
    tmp_path: Path,
) -> None:
    state = LmdbState.open(tmp_path / "state")
    try:
        state.apply([put(i + 1, f"key/{i:04}", f"old {i}") for i in range(400)], conf=CONF)
        before = list(state.items())
        index, term = state.applied_index, state.applied_term
        pause = tmp_path / "pause"
        proc = builder(tmp_path / "state", {PAUSE_ENV: f"{pause}:200"})
        assert proc.stdin is not None and proc.stdout is not None
        dest = tmp_path / "snap"
        proc.stdin.write(request_codec[0].encode(BuildRequest(str(dest))) + b"\n")
        proc.stdin.flush()
        wait_for_file(Path(f"{pause}.paused"))  # halfway through the records
        # Meanwhile the node goes on: overwrites, deletes, new keys, a new applied index.
        later = [
            *((f"key/{i:04}", f"new {i}") for i in range(0, 400, 3)),
            ("key/0001", None),
            *((f"added/{i}", "x") for i in range(50)),
        ]
        state.apply(
            [
                put(401 + n, key, value, term=2) if value is not None else delete(401 + n, key, 2)
                for n, (key, value) in enumerate(later)
            ]
        )
        assert state.applied_index == 400 + len(later) and list(state.items()) != before
        Path(f"{pause}.go").touch()
        reply = reply_codec[1].decode(proc.stdout.readline())
        proc.stdin.close()
        assert proc.wait(10) == 0  # EOF: it exits
        proc.stdout.close()
        assert reply.ok, reply
        assert (reply.index, reply.term, reply.conf) == (index, term, CONF)
        assert verify_snapshot_file(dest).index == index
        copy = MemoryState()
        copy.install_snapshot(dest)
        assert (copy.applied_index, copy.applied_term, copy.conf) == (index, term, CONF)
        assert list(copy.items()) == before
    finally:
        state.close()


def test_the_builder_dies_with_its_parent(tmp_path: Path) -> None:
    """A node killed -9 mid-build must not leave its builder writing into the data directory
    (the builder is paused mid-build here: EOF on its requests would not reach it)."""
    state = LmdbState.open(tmp_path / "state")
    state.apply([put(i + 1, f"key/{i}", "v") for i in range(50)])
    state.close()
    pause = tmp_path / "pause"
    script = (
        "import os, subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-m', 'raftkv.storage.snapshot_builder',"
        f" {str(tmp_path / 'state')!r}, str(os.getpid()), '0'], stdin=subprocess.PIPE)\n"
        f'p.stdin.write(b\'{{"dest": "{tmp_path / "snap"}"}}\\n\')\n'
        "p.stdin.flush()\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, PAUSE_ENV: f"{pause}:10"}
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, env=env
    ) as parent:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        wait_for_file(Path(f"{pause}.paused"))
        parent.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:  # reparented to init (or a subreaper), which reaps it once it died
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except FileNotFoundError:
            break
        if stat.rsplit(")", 1)[1].split()[0] == "Z":  # dead, not reaped yet
            break
        assert time.monotonic() < deadline, "the builder outlived its parent"
        time.sleep(0.01)  # another process's exit: nothing to await on
    assert not (tmp_path / "snap").exists()
