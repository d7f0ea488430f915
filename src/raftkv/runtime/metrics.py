"""Prometheus metrics of one node: a few additions on the hot path, everything else at scrape time.

Rules:
- Recording is plain arithmetic on the event loop thread: counters are ints, histograms are
  `Histogram` (one bisect into fixed bounds, no lock). prometheus-client's own Counter and
  Histogram take a lock and search the buckets linearly (1-2 µs a call on this machine, ~5 µs
  with `.labels()`); here they only *expose* values, through `Collector.collect`, which turns
  these numbers into metric families when `/metrics` is scraped.
- Gauges (role, term, indexes, pending proposals, peer connections, database size, alarms) are
  never recorded: the collector asks the driver for a `NodeSample` when scraped.
- Labelled series are children made once per label value and kept (`Labelled`): nothing formats
  or validates label values per request.
- Everything here runs on the loop thread. The writer thread's fsync time is measured in that
  thread (`timed`) and recorded on the loop once the persist returns.
- A persist that takes half the election timeout or more logs "slow fdatasync" (etcd's
  warning): a disk that slow delays heartbeats' effects and soon costs elections. At most one
  line per second, with the count of slow persists since the last line.
- `DisabledMetrics` has the same interface and records nothing (`metrics: false`).
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from raftkv.raft.messages import AnyMessage, Heartbeat, HeartbeatResponse, InstallSnapshot
from raftkv.raft.rawnode import Status
from raftkv.raft.types import NodeId, Role

log = structlog.get_logger("raftkv.metrics")

K = TypeVar("K")
V = TypeVar("V")

# Seconds. Local fdatasync here is 0.17-0.28 ms; etcd's WAL buckets start at 1 ms.
DISK_BOUNDS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                      0.25, 0.5, 1.0, 2.5)  # fmt: skip
LATENCY_BOUNDS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                         2.5, 5.0, 10.0)  # fmt: skip
RTT_BOUNDS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                     0.5, 1.0)  # fmt: skip
SNAPSHOT_SECONDS_BOUNDS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                                  300.0)  # fmt: skip
SNAPSHOT_BYTES_BOUNDS: Final = (1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10)
BATCH_BOUNDS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
ROLE_NAMES: Final = {
    Role.FOLLOWER: "follower",
    Role.PRE_CANDIDATE: "pre_candidate",
    Role.CANDIDATE: "candidate",
    Role.LEADER: "leader",
}
SLOW_FSYNC_FRACTION: Final = 0.5  # of the (minimum) election timeout
HEARTBEAT_STALE_S: Final = 2.0  # an unanswered heartbeat older than this is forgotten


class Histogram:
    """Counts per bucket, with fixed upper bounds; the last count is +Inf. Loop thread only."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound counts in that bound's bucket (le = "<=").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def merge(self, other: Histogram) -> None:
        """Add `other`'s observations (same bounds) to this one's."""
        for i, count in enumerate(other.counts):
            self.counts[i] += count
        self.total += other.total

    def add_to(self, family: HistogramMetricFamily, labels: Sequence[str]) -> None:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        family.add_metric(list(labels), buckets, self.total)


class Labelled(dict[K, V]):
    """Children by label values, each made once by `make` on first use and kept."""

    def __init__(self, make: Callable[[], V]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, key: K) -> V:
        child = self[key] = self._make()
        return child


def histogram_family(
    name: str, doc: str, labels: Sequence[str], children: Iterable[tuple[Sequence[str], Histogram]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    for values, hist in children:
        hist.add_to(family, values)
    return family


def timed(fn: Callable[..., object], *args: object) -> float:
    """Run `fn(*args)` (in the writer thread) and return how long it took, in seconds."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


@dataclass(frozen=True, slots=True)
class NodeSample:
    """What the driver reports when /metrics is scraped (`RaftDriver.metrics_sample`)."""

    status: Status
    applied_index: int
    snapshot_index: int
    pending_proposals: int
    peers: Sequence[NodeId]  # every other member, sorted
    outbound_connected: frozenset[NodeId]
    inbound_connected: frozenset[NodeId]
    files: Sequence[tuple[str, Path]]  # (store name, file) whose sizes make the database size
    alarms: Sequence[tuple[str, bool]]  # (alarm, active)
    space: tuple[int, int] | None = None  # (usage, quota in force) bytes: kv/quota.py


class RuntimeMetrics:
    """The driver's metrics. The driver calls the methods and bumps the counters; nothing else."""

    def __init__(
        self, node_id: str, election_timeout_s: float, sample: Callable[[], NodeSample]
    ) -> None:
        self.node_id = node_id
        self.slow_fsync_s = election_timeout_s * SLOW_FSYNC_FRACTION
        self._sample = sample
        self.proposals_committed = 0  # our proposals applied with their own term
        self.proposals_failed = 0  # outcome unknown: timed out, or the node stopped
        self.proposals_dropped = 0  # refused by the core (transfer, election) or overwritten
        self.read_index_rounds = 0  # ReadIndex requests stepped into the core
        self.lease_reads = 0  # reads served from the leader's lease (no ReadIndex round)
        self.leader_changes = 0
        self._leader: NodeId | None = None
        self.fsync = Histogram(DISK_BOUNDS)
        self.persist_entries = Histogram(BATCH_BOUNDS)
        self.apply_entries = Histogram(BATCH_BOUNDS)
        self.peer_rtt: Labelled[tuple[str, ...], Histogram] = Labelled(
            lambda: Histogram(RTT_BOUNDS)
        )
        self.snapshot_seconds: Labelled[tuple[str, ...], Histogram] = Labelled(
            lambda: Histogram(SNAPSHOT_SECONDS_BOUNDS)
        )
        self.snapshot_bytes: Labelled[tuple[str, ...], Histogram] = Labelled(
            lambda: Histogram(SNAPSHOT_BYTES_BOUNDS)
        )
        self._heartbeat_sent: dict[NodeId, float] = {}
        self._snapshot_sending: dict[NodeId, tuple[float, int]] = {}
        self._slow_fsyncs = 0
        self._last_slow_log = 0.0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_RuntimeCollector(self))
        ProcessCollector(registry=self.registry)

    # -- called by the driver ---------------------------------------------------------------
    def persisted(self, seconds: float, entries: int) -> None:
        self.fsync.observe(seconds)
        self.persist_entries.observe(entries)
        if seconds >= self.slow_fsync_s:
            self._slow_fsync(seconds)

    def applied(self, entries: int) -> None:
        self.apply_entries.observe(entries)

    def leader_seen(self, leader: NodeId | None) -> None:
        if leader is not None and leader != self._leader:
            self.leader_changes += 1
            self._leader = leader

    def sent(self, msgs: Iterable[AnyMessage]) -> None:
        now = time.monotonic()
        for m in msgs:
            kind = type(m)
            if kind is Heartbeat:
                sent = self._heartbeat_sent.get(m.to)
                if sent is None or now - sent > HEARTBEAT_STALE_S:
                    self._heartbeat_sent[m.to] = now
            elif kind is InstallSnapshot and isinstance(m, InstallSnapshot):
                self._snapshot_sending[m.to] = (now, _file_size(m.snapshot.data))

    def received(self, msg: AnyMessage) -> None:
        if type(msg) is HeartbeatResponse:
            sent = self._heartbeat_sent.pop(msg.from_, None)
            if sent is not None:
                self.peer_rtt[(msg.from_,)].observe(time.monotonic() - sent)

    def unreachable(self, peer: NodeId) -> None:
        self._heartbeat_sent.pop(peer, None)

    def snapshot_sent(self, peer: NodeId, ok: bool) -> None:
        started = self._snapshot_sending.pop(peer, None)
        if started is not None:
            self.snapshot_seconds[("send", "ok" if ok else "failed")].observe(
                time.monotonic() - started[0]
            )
            if ok:
                self.snapshot_bytes[("send",)].observe(started[1])

    def snapshot_done(self, step: str, seconds: float, size: int) -> None:
        """`step` is "build" or "install"."""
        self.snapshot_seconds[(step, "ok")].observe(seconds)
        self.snapshot_bytes[(step,)].observe(size)

    def _slow_fsync(self, seconds: float) -> None:
        self._slow_fsyncs += 1
        now = time.monotonic()
        if now - self._last_slow_log >= 1.0:
            self._last_slow_log = now
            log.warning(
                "slow fdatasync",
                node=self.node_id,
                took_ms=round(seconds * 1000, 1),
                expected_below_ms=round(self.slow_fsync_s * 1000, 1),
                slow_since_last_warning=self._slow_fsyncs,
            )
            self._slow_fsyncs = 0

    # -- scrape ------------------------------------------------------------------------------
    def sample(self) -> NodeSample:
        return self._sample()


class DisabledMetrics(RuntimeMetrics):
    """Metrics off: the same calls, nothing recorded, no registry to scrape."""

    def __init__(self) -> None:  # no registry, no collector
        self.proposals_committed = self.proposals_failed = self.proposals_dropped = 0
        self.read_index_rounds = self.leader_changes = self.lease_reads = 0

    def persisted(self, seconds: float, entries: int) -> None:
        pass

    def applied(self, entries: int) -> None:
        pass

    def leader_seen(self, leader: NodeId | None) -> None:
        pass

    def sent(self, msgs: Iterable[AnyMessage]) -> None:
        pass

    def received(self, msg: AnyMessage) -> None:
        pass

    def unreachable(self, peer: NodeId) -> None:
        pass

    def snapshot_sent(self, peer: NodeId, ok: bool) -> None:
        pass

    def snapshot_done(self, step: str, seconds: float, size: int) -> None:
        pass


def _file_size(path_bytes: bytes) -> int:
    try:
        return os.stat(path_bytes).st_size
    except (OSError, ValueError):
        return 0


class _RuntimeCollector(Collector):
    def __init__(self, m: RuntimeMetrics) -> None:
        self._m = m

    def collect(self) -> Iterator[Metric]:
        m = self._m
        yield from _gauges(m.sample())
        counters = (
            ("raftkv_leader_changes_seen", "Leader changes this node has seen", m.leader_changes),
            (
                "raftkv_proposals_committed",
                "Proposals made here that committed and were applied",
                m.proposals_committed,
            ),
            (
                "raftkv_proposals_failed",
                "Proposals made here whose outcome is unknown (timed out, node stopped)",
                m.proposals_failed,
            ),
            (
                "raftkv_proposals_dropped",
                "Proposals the core refused (leader transfer, election) or another leader "
                "overwrote; retried",
                m.proposals_dropped,
            ),
            ("raftkv_read_index_rounds", "ReadIndex rounds started", m.read_index_rounds),
            (
                "raftkv_lease_reads",
                "consistency=lease reads served from the leader's lease (no ReadIndex round)",
                m.lease_reads,
            ),
        )
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)
        yield histogram_family(
            "raftkv_wal_fsync_duration_seconds",
            "One Raft log write (entries + hard state) committed with fsync, per Ready",
            (),
            [((), m.fsync)],
        )
        yield histogram_family(
            "raftkv_ready_entries",
            "Entries per Ready: appended to the log (persist) and applied (apply)",
            ("step",),
            [(("persist",), m.persist_entries), (("apply",), m.apply_entries)],
        )
        yield histogram_family(
            "raftkv_peer_round_trip_seconds",
            "Heartbeat to its response, per peer (leader only)",
            ("peer",),
            sorted(m.peer_rtt.items()),
        )
        yield histogram_family(
            "raftkv_snapshot_duration_seconds",
            "Snapshot build, send (to a follower) and install durations",
            ("step", "result"),
            sorted(m.snapshot_seconds.items()),
        )
        yield histogram_family(
            "raftkv_snapshot_size_bytes",
            "Snapshot sizes built, sent and installed",
            ("step",),
            sorted(m.snapshot_bytes.items()),
        )


def _gauges(s: NodeSample) -> Iterator[Metric]:
    st = s.status
    role = GaugeMetricFamily("raftkv_role", "1 for this node's current role", labels=["role"])
    for r, name in ROLE_NAMES.items():
        role.add_metric([name], 1.0 if st.role is r else 0.0)
    yield role
    plain = (
        ("raftkv_term", "Current Raft term", st.term),
        ("raftkv_has_leader", "1 if a leader is known", 0 if st.leader is None else 1),
        ("raftkv_commit_index", "Highest log index known committed", st.commit),
        ("raftkv_applied_index", "Highest index applied to the state machine", s.applied_index),
        ("raftkv_last_index", "Last index in the local log", st.last_index),
        ("raftkv_snapshot_index", "Index of the latest local snapshot", s.snapshot_index),
        ("raftkv_proposals_pending", "Proposals waiting to be applied", s.pending_proposals),
        ("raftkv_voters", "Voters in the configuration in force", len(st.conf.voters)),
    )
    for name, doc, value in plain:
        yield GaugeMetricFamily(name, doc, value=float(value))
    conn = GaugeMetricFamily(
        "raftkv_peer_connected",
        "1 if the connection to (outbound) or from (inbound) the peer is up",
        labels=["peer", "direction"],
    )
    for peer in s.peers:
        conn.add_metric([peer, "outbound"], 1.0 if peer in s.outbound_connected else 0.0)
        conn.add_metric([peer, "inbound"], 1.0 if peer in s.inbound_connected else 0.0)
    yield conn
    size = GaugeMetricFamily(
        "raftkv_db_size_bytes", "Bytes on disk of the Raft log and the state", labels=["store"]
    )
    totals: dict[str, int] = {}
    for store, path in s.files:
        totals[store] = totals.get(store, 0) + _file_size(os.fsencode(path))
    for store, total in totals.items():
        size.add_metric([store], float(total))
    yield size
    alarm = GaugeMetricFamily("raftkv_alarm", "1 while the alarm is raised", labels=["alarm"])
    for name, active in s.alarms:
        alarm.add_metric([name], 1.0 if active else 0.0)
    yield alarm
    if s.space is not None:
        used, quota = s.space
        yield GaugeMetricFamily(
            "raftkv_space_usage_bytes",
            "Logical size of the state the quota counts (the same on every node)",
            value=float(used),
        )
        yield GaugeMetricFamily(
            "raftkv_space_quota_bytes", "Space quota in force (0: none yet)", value=float(quota)
        )
