"""raftkv side by side with etcd 3.4 on this machine (`raftkv bench compare-etcd`).

Rules (ARCHITECTURE.md §5, issue 4):
- Both clusters are 3 members on 127.0.0.1 with 100 ms election / 25 ms heartbeat, fsync on,
  data on a real disk, both running for the whole comparison (each idles while the other is
  loaded). Load is wrk with one Lua script per system (same keys, same value size) against each
  system's *current* leader, found again before every run.
- Runs alternate between the systems (the order flips every round) so that drift of the machine
  (page cache, thermal, other tenants) hits both alike; each figure is the median of the rounds.
- CPU per 1000 requests = the CPU seconds (/proc/<pid>/stat utime+stime) of all three server
  processes over the run, per 1000 completed requests.
- Failover = kill -9 of the leader, then PUTs (round-robin over the survivors) until one
  succeeds; the killed member is restarted and a leader agreed by all before the next try.
- Leader changes are counted during one saturating PUT run (target: zero).
- Numbers are reported as measured: nothing is retried, relaxed or dropped to look better.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import platform
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from raftkv.bench.clusters import (
    ClusterError,
    EtcdCluster,
    LocalCluster,
    b64,
    cpu_seconds,
    family,
    http_json,
)
from raftkv.bench.runner import LeaderWatch, fill_keyspace, leader_changes
from raftkv.bench.spec import LoadSpec, Mode, System
from raftkv.bench.stats import median, ratio
from raftkv.bench.wrk import LoadError, run_wrk

Cluster = LocalCluster | EtcdCluster
Log = Callable[[str], None]
SYSTEMS: Final[tuple[System, System]] = ("raftkv", "etcd")
FAILOVER_ATTEMPT_TIMEOUT_S: Final = 2.0
FAILOVER_GIVE_UP_S: Final = 30.0
FAILOVER_PROBE_EVERY_S: Final = 0.01


@dataclass(frozen=True, slots=True)
class LoadTest:
    name: str
    label: str
    mode: Mode
    concurrency: int
    consistency: str = "linearizable"


TESTS: Final = (
    LoadTest("put_c1", "PUT c=1", "put", 1),
    LoadTest("put_c64", "PUT c=64", "put", 64),
    LoadTest("put_c256", "PUT c=256", "put", 256),
    LoadTest("get_lin_c64", "linearizable GET c=64", "get", 64),
    # raftkv's opt-in lease read (thesis §6.4.1) against etcd's linearizable read (ReadIndex)
    LoadTest("get_lease_c64", "lease GET c=64", "get", 64, "lease"),
    LoadTest("get_stale_c64", "stale GET c=64", "get", 64, "stale"),
)


@dataclass(frozen=True, slots=True)
class CompareOptions:
    rounds: int
    duration_s: float
    failovers: int
    stability_s: float
    workdir: Path
    value_size: int = 100
    keys: int = 1000
    only: tuple[str, ...] = ()  # names of TESTS to run (all when empty)

    @classmethod
    def make(
        cls,
        *,
        quick: bool,
        rounds: int | None,
        duration_s: float | None,
        failovers: int | None,
        stability_s: float | None,
        workdir: Path,
        only: tuple[str, ...] = (),
    ) -> CompareOptions:
        """`only` picks loads by name; then the stability run and the failovers happen only
        when asked for (`stability_s`, `failovers`)."""
        unknown = sorted(set(only) - {t.name for t in TESTS})
        if unknown:
            names = ", ".join(t.name for t in TESTS)
            raise ValueError(f"unknown load {', '.join(unknown)} (known: {names})")
        return cls(
            rounds=rounds or (1 if quick else 3),
            duration_s=duration_s or (3.0 if quick else 10.0),
            failovers=failovers if failovers is not None else (0 if only else 2 if quick else 5),
            stability_s=(
                stability_s
                if stability_s is not None
                else (0.0 if only else 10.0 if quick else 60.0)
            ),
            workdir=workdir,
            only=only,
        )

    @property
    def tests(self) -> tuple[LoadTest, ...]:
        return tuple(t for t in TESTS if not self.only or t.name in self.only)


def cost_options(args: Any) -> tuple[list[LoadTest], CompareOptions]:
    """The loads and options of an A/B cost benchmark (engine_cost, read_workers_cost) from its
    --tests, --rounds, --duration and --workdir arguments; the workdir is emptied."""
    tests = [t for t in TESTS if t.name in args.tests.split(",")]
    opts = CompareOptions(
        rounds=args.rounds,
        duration_s=args.duration,
        failovers=0,
        stability_s=1.0,
        workdir=args.workdir,
    )
    shutil.rmtree(args.workdir, ignore_errors=True)
    return tests, opts


def machine_info() -> dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "etcd": _first_line(["etcd", "--version"]),
        "wrk": _first_line(["wrk", "--version"]),
        "python": platform.python_version(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _first_line(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _server_cpu(cluster: Cluster) -> float:
    """utime+stime of the members and their children (raftkv's snapshot builder and read
    workers; etcd has none)."""
    return sum(cpu_seconds(pid) for pid in family(cluster.pids().values()))


def _url(cluster: Cluster, member: str) -> str:
    return cluster.client_url(member)


def load_run(
    cluster: Cluster, system: System, test: LoadTest, opts: CompareOptions, duration_s: float
) -> dict[str, Any]:
    leader = cluster.wait_leader(10.0)
    spec = LoadSpec(
        url=_url(cluster, leader),
        system=system,
        mode=test.mode,
        duration_s=duration_s,
        concurrency=test.concurrency,
        value_size=opts.value_size,
        keys=opts.keys,
        consistency=test.consistency,  # type: ignore[arg-type]
    )
    cpu0 = _server_cpu(cluster)
    result = run_wrk(spec)
    cpu = _server_cpu(cluster) - cpu0
    return {
        "throughput": result.throughput,
        "p50": result.latency_ms["p50"],
        "p99": result.latency_ms["p99"],
        "requests": result.requests,
        "errors": result.errors,
        "cpu_per_1k": 1000 * cpu / result.requests if result.requests else float("nan"),
        "wrk_cpu_pct": result.generator_cpu_pct,
    }


def _put_once(cluster: Cluster, member: str, key: str) -> bool:
    base = _url(cluster, member)
    if cluster.kind == "etcd":
        body = f'{{"key":"{b64(key)}","value":"{b64("v")}"}}'.encode()
        status, reply = http_json(
            "POST", f"{base}/v3/kv/put", body, timeout=FAILOVER_ATTEMPT_TIMEOUT_S
        )
        return status == 200 and isinstance(reply, dict) and "error" not in reply
    status, _ = http_json("PUT", f"{base}/kv/{key}", b'{"value": "v"}', FAILOVER_ATTEMPT_TIMEOUT_S)
    return status == 200


def failover_once(cluster: Cluster, n: int) -> float:
    """Seconds from kill -9 of the leader until a PUT through a survivor succeeds.

    A PUT sent to a survivor just after the kill may hang (forwarded to the dead leader, or
    parked until an election) for its whole timeout; so a new attempt starts every
    FAILOVER_PROBE_EVERY_S, round-robin over the survivors, overlapping, and the time is when
    the first attempt to succeed completed."""
    leader = cluster.wait_leader(15.0)
    survivors = [m for m in cluster.names if m != leader]
    done = threading.Event()
    finished: list[float] = []

    def attempt(member: str, key: str) -> None:
        if _put_once(cluster, member, key) and not done.is_set():
            finished.append(time.monotonic())
            done.set()

    cluster.kill(leader, signal.SIGKILL)
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=64, thread_name_prefix="failover") as pool:
        for i, member in enumerate(itertools.cycle(survivors)):
            pool.submit(attempt, member, f"failover-{n}-{i}")
            if done.wait(FAILOVER_PROBE_EVERY_S) or time.monotonic() - t0 > FAILOVER_GIVE_UP_S:
                break
    elapsed = min(finished) - t0 if finished else float("nan")
    cluster.restart(leader)
    cluster.wait_leader(30.0)
    _wait_member_serving(cluster, leader)
    return elapsed


def _wait_member_serving(cluster: Cluster, member: str, timeout_s: float = 30.0) -> None:
    """The restarted member answers and knows the leader (so the next kill is of a full set)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cluster.leader() is not None and cluster.alive(member):
            status, _ = http_json("GET", _url(cluster, member) + "/health", timeout=0.5)
            if status == 200:
                return
        time.sleep(0.05)
    raise LoadError(f"{cluster.kind}: member {member} did not come back in {timeout_s}s")


def stability_run(cluster: Cluster, system: System, opts: CompareOptions) -> dict[str, Any]:
    leader = cluster.wait_leader(10.0)
    spec = LoadSpec(
        url=_url(cluster, leader),
        system=system,
        mode="put",
        duration_s=opts.stability_s,
        concurrency=256,
        value_size=opts.value_size,
    )
    with LeaderWatch(cluster.leader_term) as watch:
        result = run_wrk(spec)
    return {
        "throughput": result.throughput,
        "leader_changes": leader_changes(watch.events),
        "events": [{"t": round(e.t, 2), "leader": e.leader, "term": e.term} for e in watch.events],
        "errors": result.errors,
    }


def run_compare(opts: CompareOptions, log: Log = print) -> dict[str, Any]:
    """Loads, then the stability run, then failovers (last: they may break a cluster).

    A phase that fails is recorded in `report["problems"]` with the members' own view, and the
    comparison goes on with what it has: a partial table beats losing every figure."""
    if shutil.which("wrk") is None or shutil.which("etcd") is None:
        raise LoadError("needs wrk and etcd: apt-get install -y wrk etcd-server etcd-client")
    shutil.rmtree(opts.workdir, ignore_errors=True)
    clusters: dict[str, Cluster] = {
        "raftkv": LocalCluster(opts.workdir / "raftkv", log_level="info"),
        "etcd": EtcdCluster(opts.workdir / "etcd"),
    }
    report: dict[str, Any] = {
        "machine": machine_info(),
        "options": _opts_json(opts),
        "problems": [],
    }
    broken: set[str] = set()

    def problem(system: str, phase: str, exc: Exception) -> None:
        words = f"{system} {phase}: {exc}; members: {clusters[system].describe()}"
        report["problems"].append(words)
        log(f"PROBLEM {words}")

    try:
        for system in SYSTEMS:
            cluster = clusters[system]
            log(f"starting 3-member {system} in {opts.workdir / system}")
            cluster.start()
            url = _url(cluster, cluster.wait_leader())
            asyncio.run(fill_keyspace(url, system, "bench", opts.keys, opts.value_size))
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            t.name: {s: [] for s in SYSTEMS} for t in opts.tests
        }
        report["runs"] = runs
        for rnd in range(opts.rounds):
            order = SYSTEMS if rnd % 2 == 0 else SYSTEMS[::-1]
            for test in opts.tests:
                for system in order:
                    if system in broken:
                        continue
                    try:
                        r = load_run(clusters[system], system, test, opts, opts.duration_s)
                    except (LoadError, ClusterError) as exc:
                        problem(system, f"round {rnd + 1} {test.label}", exc)
                        broken.add(system)
                        continue
                    runs[test.name][system].append(r)
                    log(
                        f"round {rnd + 1} {test.label:<22} {system:<6} "
                        f"{r['throughput']:8.0f} req/s  p50 {r['p50']:6.2f} ms  "
                        f"p99 {r['p99']:7.2f} ms  errors {sum(r['errors'].values())}"
                    )
        stability: dict[str, Any] = {}
        for system in SYSTEMS if opts.stability_s > 0 else ():
            if system in broken:
                continue
            try:
                stability[system] = stability_run(clusters[system], system, opts)
            except (LoadError, ClusterError) as exc:
                problem(system, "stability run", exc)
                broken.add(system)
                continue
            log(
                f"stability {system:<6} {opts.stability_s:.0f} s saturating PUT: "
                f"{stability[system]['leader_changes']} leader changes"
            )
        report["stability"] = stability
        failover: dict[str, list[float]] = {s: [] for s in SYSTEMS}
        report["failover_s"] = failover
        for i in range(opts.failovers):
            for system in SYSTEMS if i % 2 == 0 else SYSTEMS[::-1]:
                if system in broken:
                    continue
                try:
                    secs = failover_once(clusters[system], i)
                except (LoadError, ClusterError) as exc:
                    problem(system, f"failover {i + 1}", exc)
                    broken.add(system)
                    continue
                failover[system].append(secs)
                log(f"failover {i + 1} {system:<6} {secs:.3f} s")
    finally:
        for cluster in clusters.values():
            cluster.stop()
    report["summary"] = summarize(report)
    return report


def _opts_json(opts: CompareOptions) -> dict[str, Any]:
    return {
        "rounds": opts.rounds,
        "duration_s": opts.duration_s,
        "failovers": opts.failovers,
        "stability_s": opts.stability_s,
        "value_size": opts.value_size,
        "keys": opts.keys,
        "workdir": str(opts.workdir),
    }


def summarize(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows (metric, raftkv, etcd, ratio, better) of medians over the rounds."""
    rows: list[dict[str, Any]] = []

    def add(metric: str, ours: float, theirs: float, higher_better: bool, unit: str) -> None:
        rows.append(
            {
                "metric": metric,
                "unit": unit,
                "raftkv": ours,
                "etcd": theirs,
                "ratio": ratio(ours, theirs),
                "higher_better": higher_better,
            }
        )

    runs = report.get("runs", {})
    for test in TESTS:
        per = runs.get(test.name)
        if not per:
            continue

        def med(system: str, field: str, per: dict[str, Any] = per) -> float:
            return median([r[field] for r in per.get(system, [])])

        add(f"{test.label} throughput", med("raftkv", "throughput"), med("etcd", "throughput"),
            True, "req/s")  # fmt: skip
        add(f"{test.label} p50", med("raftkv", "p50"), med("etcd", "p50"), False, "ms")
        add(f"{test.label} p99", med("raftkv", "p99"), med("etcd", "p99"), False, "ms")
        if test.name in ("put_c64", "get_lin_c64", "get_lease_c64"):
            add(f"{test.label} CPU per 1000 requests", med("raftkv", "cpu_per_1k"),
                med("etcd", "cpu_per_1k"), False, "CPU s")  # fmt: skip
    fo = report.get("failover_s")
    if fo and any(fo.values()):
        add("failover (kill -9 leader → next PUT ok), median", median(fo["raftkv"]),
            median(fo["etcd"]), False, "s")  # fmt: skip
    st = report.get("stability")
    if st:
        nan = {"leader_changes": float("nan")}
        add("leader changes during saturating PUT run", st.get("raftkv", nan)["leader_changes"],
            st.get("etcd", nan)["leader_changes"], False, "count")  # fmt: skip
    return rows


def _fmt(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "n/a"
    if unit == "req/s":
        return f"{value:,.0f}"
    if unit == "count":
        return f"{value:.0f}"
    if unit == "CPU s":
        return f"{value:.3f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    o = report["options"]
    lines = [
        f"### raftkv vs etcd — {m['date']}",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}, Python {m['python']}; "
        f"{m['etcd']}; {m['wrk']}.",
        f"Both: 3 members on 127.0.0.1, fsync on, election timeout 100 ms (heartbeat: raftkv "
        f"25 ms, etcd 20 ms, as etcd wants at least 5 beats per election timeout); "
        f"load average at start {m.get('loadavg', '?')}. "
        f"Medians of {o['rounds']} alternating round(s) of {o['duration_s']:g} s per load, "
        f"value {o['value_size']} B, reads over {o['keys']} keys; "
        f"{o['failovers']} failover(s) each; stability run {o['stability_s']:g} s at c=256.",
        "",
        "| metric | raftkv | etcd | raftkv / etcd |",
        "|---|---:|---:|---:|",
    ]
    for row in report["summary"]:
        r = row["ratio"]
        better = (r > 1) == row["higher_better"] if r == r and r != 1 else None
        mark = "" if better is None else (" ✓" if better else "")
        ratio_s = "—" if r != r or row["unit"] == "count" else f"{r:.2f}x{mark}"
        unit = f" ({row['unit']})" if row["unit"] != "count" else ""
        lines.append(
            f"| {row['metric']}{unit} | {_fmt(row['raftkv'], row['unit'])} "
            f"| {_fmt(row['etcd'], row['unit'])} | {ratio_s} |"
        )
    notes = _notes(report)
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _notes(report: dict[str, Any]) -> list[str]:
    notes: list[str] = [f"- PROBLEM: {p}" for p in report.get("problems", [])]
    wrk_max = 0.0
    for per in report.get("runs", {}).values():
        for system, results in per.items():
            for r in results:
                wrk_max = max(wrk_max, r["wrk_cpu_pct"])
                n_err = sum(r["errors"].values())
                if n_err:
                    notes.append(f"- {system}: {n_err} errors in one run: {r['errors']}")
    if wrk_max:
        notes.append(f"- wrk used at most {wrk_max:.0f}% of one core in any run.")
    for system, values in report.get("failover_s", {}).items():
        if not values:
            continue
        shown = ", ".join(f"{v:.3f}" for v in values)
        notes.append(f"- failover times {system} (s): {shown}")
    return notes
