"""Issue 10's peer-port attacks against real nodes: none changes data or stops a node.

On main before peer validation, the first one changed a committed value (a Hello from a
made-up id was admitted and its forged AppendEntries stepped into the core), and a Heartbeat
with term 2**64-1 killed the node at its next campaign and again on every restart.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from raftkv.codec.commands import encode_command
from raftkv.codec.wire import PROTOCOL_VERSION, Hello, WireMessage, encode_frames
from raftkv.kv.commands import Put
from raftkv.raft.messages import AppendEntries, Heartbeat
from raftkv.raft.types import Entry, Index, NodeId, Term
from tests.integration.cluster import Cluster, wait_for


def attack(c: Cluster, target: str, frames: list[WireMessage]) -> None:
    """Send `frames` to `target`'s Raft port and wait until it closes the connection."""
    node = c.nodes[target]
    with socket.create_connection((node.host, node.raft_port), timeout=10) as sock:
        sock.sendall(encode_frames(frames))
        while sock.recv(4096):  # EOF (or reset) once the node drops us
            pass


def forged_append(frm: str, to: str, term: int, index: int, value: str) -> AppendEntries:
    entry = Entry(Term(term), Index(index), data=encode_command(Put("k", value)))
    # prev = (index-1, term): plausible enough for a follower that has index-1 in that term.
    return AppendEntries(
        Term(term), NodeId(frm), NodeId(to), Index(0), Term(0), (entry,), Index(index)
    )


def test_peer_port_attacks_change_nothing(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster()
    c.start()
    leader = c.wait_ready()
    assert c.put(leader, "k", "good").status == 200
    name = str(c.config()["cluster"]["name"])  # type: ignore[index]
    follower = next(n for n in c.nodes if n != leader)
    other = next(n for n in c.nodes if n not in (leader, follower))

    # 1. A made-up id with a forged AppendEntries (term far ahead, entry at index 1, committed).
    for target in (leader, follower):
        attack(
            c,
            target,
            [
                Hello(PROTOCOL_VERSION, name, NodeId("mallory")),
                forged_append("mallory", target, 50, 1, "evil"),
            ],
        )
    # 2. Impersonating a live member: refused, the member's own connection stays.
    attack(
        c,
        follower,
        [
            Hello(PROTOCOL_VERSION, name, NodeId(other)),
            forged_append(other, follower, 50, 1, "evil"),
        ],
    )
    # 3. A member's id (not connected: stopped) with a term no log can hold.
    c.kill(other)
    attack(
        c,
        follower,
        [
            Hello(PROTOCOL_VERSION, name, NodeId(other)),
            Heartbeat(Term(2**64 - 1), NodeId(other), NodeId(follower), Index(0)),
        ],
    )
    for n in (leader, follower):
        wait_for(f"{n} reads k", lambda n=n: c.get(n, "k").json.get("value") == "good")
        assert c.nodes[n].running
    log = c.nodes[follower].log_text()
    assert "not a member of the live configuration" in log
    assert "already has a live connection" in log
    assert "out of range" in log
    # the cluster still works and elects a leader as usual (node-3's term was never adopted)
    c.start_node(other)
    leader = c.wait_ready()
    assert c.put(leader, "k", "after").status == 200
    assert c.local(leader)["term"] < 2**63
