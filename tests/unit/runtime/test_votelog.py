"""The election log states the facts a vote depended on, read from the core without changing it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from raftkv.raft.messages import RequestVote, RequestVoteResponse
from raftkv.raft.types import Index, NodeId, Term
from raftkv.runtime import votelog
from tests.unit.raft.harness import Cluster

N1, N2, N3 = NodeId("n1"), NodeId("n2"), NodeId("n3")


@pytest.fixture(autouse=True)
def _debug_logs() -> Iterator[None]:
    """Debug lines on for this module only; the configuration others set is restored."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    yield
    structlog.configure(**saved)


def test_a_refused_vote_in_lease_is_logged_with_the_lease_facts() -> None:
    c = Cluster(3)
    c.elect(N1)
    c.nodes[N1].propose(b"x")
    c.settle()
    with capture_logs() as logs:
        votelog.step("n2", c.nodes[N2], RequestVote(Term(5), N3, N2, Index(100), Term(1)))
    (line,) = [e for e in logs if e["event"] == "vote request answered"]
    assert line["candidate"] == N3 and line["cand_term"] == 5
    assert line["our_in_lease"] is True and line["our_leader"] == N1
    assert line["granted"] is None  # ignored in lease (§4.2.3): no answer at all
    assert c.nodes[N2].status().term == 1  # logging did not change the outcome


def test_a_granted_vote_out_of_lease_is_logged_and_its_answer_found() -> None:
    c = Cluster(3)
    c.elect(N1)
    for _ in range(10):  # n2 hears nothing: out of lease
        c.nodes[N2].tick()
    with capture_logs() as logs:
        votelog.step("n2", c.nodes[N2], RequestVote(Term(5), N3, N2, Index(100), Term(1)))
        votelog.step("n3", c.nodes[N3], RequestVoteResponse(Term(5), N2, N3, True))
    asked = [e for e in logs if e["event"] == "vote request answered"]
    answered = [e for e in logs if e["event"] == "vote answer received"]
    assert asked[0]["our_in_lease"] is False and asked[0]["granted"] is True
    assert answered[0]["voter"] == N2 and answered[0]["granted"] is True
