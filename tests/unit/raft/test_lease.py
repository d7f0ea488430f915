"""Leader lease reads (thesis §6.4.1) and the followers' promise that makes them safe."""

from __future__ import annotations

import pytest

from raftkv.raft.config import RaftConfig
from raftkv.raft.lease import LeaseTracker, safe_lease_ticks
from raftkv.raft.messages import (
    AnyMessage,
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from raftkv.raft.types import ConfChange, ConfChangeKind, Index, NodeId, Role, Term
from tests.unit.raft.harness import Cluster

N1, N2, N3, N4 = (NodeId(f"n{i}") for i in range(1, 5))
E = 4  # election ticks of these clusters (the harness's default config)
LEASE = 2  # safe_lease_ticks(4, 0.1)


def lease_cluster(n: int = 3, lease: int = LEASE, **cfg: object) -> Cluster:
    c = Cluster(n, lease_ticks=lease, **cfg)
    c.elect(N1)
    c.tick_all(1)  # one heartbeat round, echoed by both followers
    return c


def test_safe_lease_ticks_covers_drift_and_tick_granularity() -> None:
    assert safe_lease_ticks(4, 0.1) == 2  # (4 - 1) * 0.9 / 1.1 = 2.45
    assert safe_lease_ticks(4, 0.1, follower_slack=2) == 1  # 2 * 0.818 = 1.6
    assert safe_lease_ticks(4, 0.0) == 3
    assert safe_lease_ticks(3, 0.1, follower_slack=2) == 0  # too short to be worth a lease
    assert safe_lease_ticks(10, 0.5) == 3  # 9 * 0.5 / 1.5
    with pytest.raises(ValueError, match="drift"):
        safe_lease_ticks(4, 1.0)
    with pytest.raises(ValueError, match="lease_ticks"):
        RaftConfig(id=N1, election_ticks=4, lease_ticks=4)


def test_lease_held_serves_the_commit_index_without_a_heartbeat() -> None:
    c = lease_cluster()
    leader = c.nodes[N1]
    commit = leader.status().commit
    assert commit >= 1  # the no-op of the term is committed
    assert leader.lease_read_index() == commit
    assert not leader.has_ready()  # no message, no round: the read costs nothing
    # Writes move the read index along.
    leader.propose(b"x")
    c.settle()
    assert leader.lease_read_index() == commit + 1


def test_lease_expires_without_fresh_echoes_and_read_index_still_works() -> None:
    c = lease_cluster()
    leader = c.nodes[N1]
    c.drop = lambda m: isinstance(m, HeartbeatResponse)
    seen = []
    for _ in range(LEASE + 1):
        leader.tick()
        c.settle()
        seen.append(leader.lease_read_index() is not None)
    # The round sent at the last echoed tick lasts LEASE ticks from when it was SENT.
    assert seen == [True] + [False] * LEASE
    # The fallback, ReadIndex, waits for a quorum as always.
    leader.read_index(b"r")
    c.settle()
    assert c.read_states[N1] == []
    c.drop = lambda m: False
    leader.tick()
    c.settle()
    assert [r.context for r in c.read_states[N1]] == [b"r"]
    assert leader.lease_read_index() is not None  # that round's echoes renewed the lease


def test_one_echo_is_not_a_quorum_of_five() -> None:
    c = lease_cluster(5)
    c.drop = lambda m: isinstance(m, HeartbeatResponse) and m.from_ in (N3, N4, NodeId("n5"))
    for _ in range(LEASE):
        c.nodes[N1].tick()
        c.settle()
    assert c.nodes[N1].lease_read_index() is None  # only n2 echoes: 2 of 5
    c.drop = lambda m: isinstance(m, HeartbeatResponse) and m.from_ in (N4, NodeId("n5"))
    c.nodes[N1].tick()
    c.settle()
    assert c.nodes[N1].lease_read_index() is not None  # n1, n2, n3: a quorum


def test_no_lease_before_the_leader_commits_in_its_term() -> None:
    c = lease_cluster()
    # n2 wins an election, but its no-op cannot commit (its appends are lost).
    c.drop = lambda m: m.from_ == N2 and isinstance(m, AppendEntries)
    c.elect(N2)
    n2 = c.nodes[N2]
    n2.tick()
    c.settle()  # heartbeats echoed: a quorum promised
    assert n2.raft.lease.holds(n2.raft.conf.voters, N2, n2.raft.clock)
    assert n2.lease_read_index() is None  # §6.4: its commit index may be stale
    c.drop = lambda m: False
    c.tick_all(1)
    assert n2.lease_read_index() == n2.status().commit


def test_leadership_transfer_ends_the_lease_for_the_term() -> None:
    c = lease_cluster()
    old = c.nodes[N1]
    assert old.lease_read_index() is not None
    held: list[AnyMessage] = []
    c.drop = lambda m: isinstance(m, TimeoutNow) and not held.append(m)  # delayed in transit
    old.transfer_leader(N2)
    c.settle()
    assert held and old.lease_read_index() is None
    for _ in range(E + 1):  # the transfer times out: n1 leads on, without a lease
        old.tick()
        c.settle()
    assert old.status().role is Role.LEADER and old.status().lead_transferee is None
    assert old.lease_read_index() is None
    # The late TimeoutNow still elects n2: it bypasses the followers' promise (§3.10).
    c.drop = lambda m: False
    c.nodes[N2].step(held[0])
    c.settle()
    assert c.leader() == N2 and old.status().role is Role.FOLLOWER
    new = c.nodes[N2]
    assert new.lease_read_index() is None  # a new leader earns its own lease first
    c.tick_all(1)
    assert new.lease_read_index() == new.status().commit


def test_partitioned_leader_stops_lease_reads_before_anyone_can_be_elected() -> None:
    """Lockstep ticks, the old leader cut off; n2 campaigns at every chance."""
    c = lease_cluster(3)
    c.drop = lambda m: N1 in (m.from_, m.to)
    stopped_at = elected_at = None
    for t in range(1, 6 * E):
        for node in (N1, N2, N3):
            c.nodes[node].tick()
        if c.nodes[N2].status().role is Role.FOLLOWER:
            c.nodes[N2].campaign()  # refused while the promise lasts
        c.settle()
        serving = c.nodes[N1].lease_read_index() is not None
        others = [n for n in (N2, N3) if c.nodes[n].status().role is Role.LEADER]
        assert not (serving and others), f"tick {t}: two leaders serve reads"
        if not serving and stopped_at is None:
            stopped_at = t
        if others and elected_at is None:
            elected_at = t
    assert stopped_at is not None and elected_at is not None
    assert stopped_at <= LEASE < E <= elected_at


def test_promise_outlives_a_term_change_by_a_non_leader_message() -> None:
    """A higher-term message that is not a vote (here a stale append reply) moves a follower
    to a new term with no leader; the promise it made must still hold there."""
    c = lease_cluster()
    n2 = c.nodes[N2]
    n2.step(AppendEntriesResponse(Term(7), N3, N2, Index(0)))
    assert n2.status().term == 7 and n2.status().leader is None
    n2.step(RequestVote(Term(7), N3, N2, Index(100), Term(7)))
    rd = n2.ready()
    votes = [m for m in rd.persisted_messages if isinstance(m, RequestVoteResponse)]
    assert votes and not votes[0].granted and n2.status().vote is None
    n2.advance(rd)
    for _ in range(E):
        n2.tick()
    n2.step(RequestVote(Term(7), N3, N2, Index(100), Term(7)))
    assert n2.status().vote == N3  # promise over: an up-to-date candidate gets the vote


def test_restarted_voter_waits_an_election_timeout_before_voting() -> None:
    c = lease_cluster()
    c.restart(N2)
    n2 = c.nodes[N2]
    n2.step(RequestVote(Term(5), N3, N2, Index(100), Term(4)))
    assert n2.status().term == 1  # ignored: it may have promised just before the crash
    for _ in range(E):
        n2.tick()
    n2.step(RequestVote(Term(5), N3, N2, Index(100), Term(4)))
    assert n2.status().vote == N3


def test_a_voter_restarted_at_term_0_waits_too() -> None:
    # It may have echoed a term-1 lease round before term 1 reached its disk: a start at term 0
    # is no proof that it never promised anything.
    c = Cluster(3, lease_ticks=LEASE)
    n2 = c.nodes[N2]
    assert n2.status().term == 0
    n2.step(RequestVote(Term(2), N3, N2, Index(0), Term(0)))
    assert n2.status().vote != N3
    for _ in range(E):
        n2.tick()
    n2.step(RequestVote(Term(2), N3, N2, Index(0), Term(0)))
    assert n2.status().vote == N3


def test_without_leases_followers_promise_nothing_and_leaders_hold_none() -> None:
    c = lease_cluster(lease=0)
    assert c.nodes[N1].lease_read_index() is None
    hb = Heartbeat(Term(1), N1, N2, Index(0), b"", 9)
    c.nodes[N2].step(hb)
    echoed = [m for m in c.nodes[N2].raft.msgs if isinstance(m, HeartbeatResponse)]
    assert echoed and echoed[0].round == 0
    # A leader with leases on gets none from followers that do not echo (an older version).
    c = Cluster(3, lease_ticks=LEASE)
    c.elect(N1)
    for node in (N2, N3):
        c.nodes[node].raft.cfg = RaftConfig(id=node)  # lease_ticks=0: no promise
    c.tick_all(1)
    assert c.nodes[N1].lease_read_index() is None


def test_lease_needs_check_quorum_and_a_settled_configuration() -> None:
    c = lease_cluster(check_quorum=False)
    assert c.nodes[N1].lease_read_index() is None
    c = lease_cluster(4)
    leader = c.nodes[N1]
    assert leader.lease_read_index() is not None
    c.drop = lambda m: m.to == N4  # the new config's entry commits, n4 never hears of it
    leader.propose_conf_change(ConfChange(ConfChangeKind.REMOVE_NODE, N4))
    assert leader.lease_read_index() is None  # a change is in flight
    c.settle()
    assert N4 not in leader.status().conf.voters
    assert leader.lease_read_index() is None  # earned again under the new configuration
    c.tick_all(1)
    assert leader.lease_read_index() is not None


def test_skipped_clock_periods_end_the_lease() -> None:
    c = lease_cluster()
    leader = c.nodes[N1]
    assert leader.lease_read_index() is not None
    leader.clock_skipped(LEASE)  # the loop stalled for two tick periods
    assert leader.lease_read_index() is None
    assert leader.status().role is Role.LEADER  # elections are not hurried by it


def test_tracker_ignores_bogus_and_stale_rounds() -> None:
    t = LeaseTracker(2)
    voters = (N1, N2, N3)
    t.echo(N2, 50, now=10)  # a round from the future: ignored
    t.echo(N2, 0, now=10)  # no promise: ignored
    assert t.start(voters, N1, 10) is None
    t.echo(N2, 9, now=10)
    t.echo(N2, 5, now=10)  # older than what n2 already echoed
    assert t.start(voters, N1, 10) == 8
    assert t.holds(voters, N1, 9) and not t.holds(voters, N1, 10)


def test_held_ticks_end_the_start_promise_without_starting_an_election() -> None:
    # A fresh cluster holds its followers' elections while the bootstrap node starts. Held
    # ticks must still run the promise timer, or the held nodes refuse the bootstrap node's
    # vote for the whole hold (the seed walkthrough then saw another node lead first).
    c = Cluster(3, lease_ticks=LEASE)
    n2 = c.nodes[N2]
    for _ in range(5 * E):
        n2.tick_held()
    assert n2.status().role is Role.FOLLOWER and n2.status().term == 0  # never campaigned
    n2.step(RequestVote(Term(1), N1, N2, Index(0), Term(0)))
    assert n2.status().vote == N1
