"""`raftkv sim`: run the deterministic cluster simulator (`raftkv.sim`).

    raftkv sim --seeds 1000 --events 2000 [--start 0] [--jobs N]   sweep seeds over N processes
    raftkv sim --seed 17 --trace                                  replay one seed, every event
    raftkv sim --bench                                            simulator speed (events/s)

Rules:
- The simulation is pure; this module owns the impure parts: worker processes, wall-clock
  timing, printing, and a per-seed time limit (SIGALRM in the worker) that turns a core stuck in
  a loop into a `hang` violation instead of a stuck sweep.
- Exit code 1 when any seed reports a violation, 0 otherwise.
- `sweep()` and `run_guarded()` are reused by the simulator's own tests.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console

from raftkv.sim.invariants import Violation
from raftkv.sim.runner import TAIL, SimOptions, SimResult, run_seed

DEFAULT_TIMEOUT = 120.0  # seconds per seed before it counts as a hang


class _SeedTimeout(BaseException):
    """Raised in a worker by SIGALRM; a BaseException so the simulator's catch-all misses it."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _SeedTimeout


def run_guarded(seed: int, events: int, options: SimOptions, timeout: float) -> SimResult:
    """`run_seed` with a wall-clock limit; only for a process's main thread (workers)."""
    tail: deque[str] = deque(maxlen=TAIL)
    previous = signal.signal(signal.SIGALRM, _alarm)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, timeout)  # an enclosing alarm (pytest's)
    started = time.monotonic()
    try:
        return run_seed(seed, events, options, tail)
    except _SeedTimeout:
        last = tail[-1].split(" ", 2) if tail else ["0", "0"]
        detail = (
            f"no result after {timeout:g}s: the core (or the simulator) is stuck in a loop "
            f"during the event after the last one shown"
        )
        violation = Violation("hang", int(last[1]), int(last[0]) + 1, detail)
        return SimResult(seed, (violation,), "", {}, tail=tuple(tail))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:  # give the enclosing alarm back what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 1e-3))


@dataclass(frozen=True, slots=True)
class _Task:
    seed: int
    events: int
    options: SimOptions
    timeout: float


def _work(task: _Task) -> tuple[SimResult, float]:
    started = time.perf_counter()
    result = run_guarded(task.seed, task.events, task.options, task.timeout)
    return result, time.perf_counter() - started


def sweep(
    seeds: Iterable[int],
    events: int,
    *,
    jobs: int,
    options: SimOptions | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    stop_at_first: bool = False,
    on_result: Callable[[SimResult, float], None] | None = None,
) -> list[SimResult]:
    """Run seeds over `jobs` worker processes; results come back in seed order.

    With `stop_at_first`, stops at the first seed (in seed order) that reports a violation.
    """
    opt = replace(options or SimOptions(), trace=False)
    tasks = [_Task(s, events, opt, timeout) for s in seeds]
    out: list[SimResult] = []
    results: Iterator[tuple[SimResult, float]]
    if jobs <= 1:
        results = map(_work, tasks)
        return _collect(results, out, stop_at_first, on_result)
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        results = pool.imap(_work, tasks, chunksize=1)
        _collect(results, out, stop_at_first, on_result)
        pool.terminate()  # drop the rest when stopping early
    return out


def _collect(
    results: Iterator[tuple[SimResult, float]],
    out: list[SimResult],
    stop_at_first: bool,
    on_result: Callable[[SimResult, float], None] | None,
) -> list[SimResult]:
    for result, elapsed in results:
        out.append(result)
        if on_result is not None:
            on_result(result, elapsed)
        if stop_at_first and result.violations:
            break
    return out


def describe_violations(result: SimResult) -> list[str]:
    lines = [f"seed {result.seed}: {result.config}"]
    for v in result.violations:
        lines.append(f"  {v.kind} at event {v.event} (time {v.time}): {v.detail}")
    if result.tail:
        lines.append("  last events:")
        lines += [f"    {line}" for line in result.tail[-25:]]
    return lines


def register(app: typer.Typer) -> None:
    @app.command("sim")
    def sim(
        seeds: Annotated[int, typer.Option(help="How many seeds to sweep.")] = 100,
        start: Annotated[int, typer.Option(help="First seed of the sweep.")] = 0,
        events: Annotated[int, typer.Option(help="Events per seed before winding down.")] = 2000,
        jobs: Annotated[int, typer.Option(help="Worker processes (default: cores).")] = 0,
        seed: Annotated[int | None, typer.Option(help="Replay this one seed.")] = None,
        trace: Annotated[bool, typer.Option(help="With --seed: print every event.")] = False,
        bench: Annotated[bool, typer.Option(help="Measure simulator speed.")] = False,
        timeout: Annotated[float, typer.Option(help="Seconds per seed before a hang.")] = (
            DEFAULT_TIMEOUT
        ),
        membership: Annotated[
            bool,
            typer.Option(help="Membership-heavy faults (bursts of changes, new-leader changes)."),
        ] = False,
        leases: Annotated[
            bool,
            typer.Option(help="Leader leases on every seed, half the gets as lease reads."),
        ] = False,
        depose: Annotated[
            bool,
            typer.Option(
                help="Leases, and faults aimed at them: leaders cut off while a follower "
                "campaigns at once, busy lease readers."
            ),
        ] = False,
    ) -> None:
        """Deterministic cluster simulation: faults, clients, invariants after every event."""
        console = Console(highlight=False)
        options = SimOptions(membership=membership, leases=leases, depose=depose)
        if seed is not None:
            raise typer.Exit(_replay(console, seed, events, trace, options))
        if bench:
            raise typer.Exit(_bench(console, events))
        raise typer.Exit(
            _sweep(
                console,
                range(start, start + seeds),
                events,
                jobs or os.cpu_count() or 1,
                timeout,
                options,
            )
        )


def _replay(console: Console, seed: int, events: int, trace: bool, options: SimOptions) -> int:
    started = time.perf_counter()
    result = run_seed(seed, events, dataclasses.replace(options, trace=trace))
    elapsed = time.perf_counter() - started
    for line in result.trace:
        console.print(line, markup=False)
    console.print(f"seed {seed}: {result.config}", markup=False)
    console.print("stats: " + " ".join(f"{k}={v}" for k, v in result.stats.items()), markup=False)
    if result.violations:
        for line in describe_violations(result)[1:]:
            console.print(line, markup=False)
    verdict = "VIOLATION" if result.violations else "ok"
    console.print(f"{verdict}  trace hash {result.trace_hash}  ({elapsed:.2f}s)", markup=False)
    return 1 if result.violations else 0


def _sweep(
    console: Console, seeds: range, events: int, jobs: int, timeout: float, options: SimOptions
) -> int:
    started = time.perf_counter()
    bad: list[SimResult] = []
    done = 0
    total_events = 0
    lease_reads = lease_fallbacks = 0

    def report(result: SimResult, elapsed: float) -> None:
        nonlocal done, total_events, lease_reads, lease_fallbacks
        done += 1
        total_events += result.stats.get("events", 0)
        lease_reads += result.stats.get("lease_reads", 0)
        lease_fallbacks += result.stats.get("lease_fallbacks", 0)
        if result.violations:
            bad.append(result)
            for line in describe_violations(result):
                console.print(line, markup=False)
        if done % 50 == 0 or done == len(seeds):
            rate = done / (time.perf_counter() - started)
            console.print(f"{done}/{len(seeds)} seeds, {len(bad)} failing, {rate:.1f} seeds/s")

    console.print(
        f"sweeping seeds {seeds.start}..{seeds.stop - 1}, {events} events each, {jobs} jobs"
    )
    sweep(seeds, events, jobs=jobs, options=options, timeout=timeout, on_result=report)
    took = time.perf_counter() - started
    failing = ", ".join(str(r.seed) for r in bad) or "none"
    console.print(
        f"{done} seeds, {total_events} events in {took:.1f}s; failing seeds: {failing}",
        markup=False,
    )
    if lease_reads or lease_fallbacks:
        console.print(
            f"lease reads: {lease_reads} served from the lease, {lease_fallbacks} fell back "
            "to ReadIndex (followers, no lease held)",
            markup=False,
        )
    return 1 if bad else 0


def _bench(console: Console, events: int) -> int:
    started = time.perf_counter()
    total = 0
    n = 20
    for s in range(n):
        total += run_seed(s, events).stats.get("events", 0)
    took = time.perf_counter() - started
    console.print(
        f"{n} seeds x {events} events: {total} events in {took:.2f}s on one core = "
        f"{total / took:,.0f} events/s, {took / n * 1000:.0f} ms per seed"
    )
    return 0
