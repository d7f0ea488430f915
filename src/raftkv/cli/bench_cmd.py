"""`raftkv bench writes|reads|mixed N` and `raftkv bench compare-etcd`.

Rules: the work is in `raftkv.bench` (runner, wrk, pyload, compare); this module parses flags,
shows a live progress bar (on stderr, so `--json` output stays clean), and prints the result.
Exit codes: 0 the run completed (even with some errors, which it reports); 1 no request
succeeded; 2 the cluster or the load generator could not be used.
"""

from __future__ import annotations

import asyncio
import enum
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from raftkv.bench.clusters import ClusterError
from raftkv.bench.compare import CompareOptions, markdown, run_compare
from raftkv.bench.runner import (
    LeaderWatch,
    fill_keyspace,
    leader_changes,
    raftkv_members,
    raftkv_probe,
    run_load,
    wait_for_leader,
)
from raftkv.bench.spec import LoadSpec
from raftkv.bench.stats import LoadResult
from raftkv.bench.wrk import LoadError
from raftkv.ops.inspector import DEFAULT_ADDRESS


class Gen(enum.StrEnum):
    auto = "auto"
    wrk = "wrk"
    python = "python"


class Consistency(enum.StrEnum):
    linearizable = "linearizable"
    lease = "lease"
    stale = "stale"


class Target(enum.StrEnum):
    leader = "leader"
    follower = "follower"


def pick_target(members: dict[str, str], leader: str, target: str) -> str:
    """The member to load: the leader, or (forwarded load) the first follower by name."""
    if target == Target.leader:
        return leader
    followers = sorted(n for n in members if n != leader)
    if not followers:
        raise LoadError("--target follower needs a cluster with a follower")
    return followers[0]


def _print_json(body: object) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(body)).decode() + "\n")


def render_result(console: Console, report: dict[str, Any]) -> None:
    r = report["result"]
    table = Table(title=f"raftkv bench {report['mode']} ({r['generator']})", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if report.get("target_role", "leader") == "leader":
        table.add_row("target (leader)", f"{report['leader']} @ {report['target']}")
    else:
        table.add_row("target (follower)", f"{report['target']} (leader {report['leader']})")
    table.add_row("requests", str(r["requests"]))
    table.add_row("concurrency", str(r["concurrency"]))
    table.add_row("duration", f"{r['duration_s']:.2f} s")
    table.add_row("throughput", f"{r['throughput']:.0f} req/s")
    for k in ("p50", "p90", "p99", "p999", "max", "mean"):
        label = "p99.9" if k == "p999" else k
        table.add_row(f"latency {label}", f"{r['latency_ms'][k]:.2f} ms")
    table.add_row("errors", str(r["error_count"]))
    for kind, n in r["errors"].items():
        table.add_row(f"  {kind}", str(n), style="red")
    table.add_row("leader changes", str(report["leader_changes"]))
    table.add_row("load generator CPU", f"{r['generator_cpu_pct']:.0f}% of one core")
    console.print(table)


def bench_once(
    mode: str,
    count: int,
    *,
    address: str,
    concurrency: int,
    value_size: int,
    consistency: str,
    read_ratio: float,
    keys: int,
    generator: Gen,
    plot: Path | None,
    progress_console: Console | None,
    max_duration_s: float = 600.0,
    target: str = Target.leader,
) -> tuple[dict[str, Any], LoadResult, LeaderWatch]:
    members = raftkv_members(address)
    probe = raftkv_probe(members)
    leader = wait_for_leader(probe)
    loaded = pick_target(members, leader, target)
    url = "http://" + members[loaded]
    load_mode = {"writes": "put", "reads": "get", "mixed": "mixed"}[mode]
    if load_mode != "put":
        # Filled through the leader: the key space is not part of the measured load.
        filler = "http://" + members[leader]
        asyncio.run(fill_keyspace(filler, "raftkv", "bench", keys, value_size))
    spec = LoadSpec(
        url=url,
        mode=load_mode,  # type: ignore[arg-type]
        requests=count,
        duration_s=max_duration_s,
        concurrency=concurrency,
        value_size=value_size,
        keys=keys,
        read_ratio=read_ratio,
        consistency=consistency,  # type: ignore[arg-type]
        samples=plot is not None,
    )
    with LeaderWatch(probe) as watch:
        offset = time.monotonic() - watch.start_t
        if progress_console is None:
            result = run_load(spec, generator.value)
        else:
            with Progress(
                TextColumn(f"{mode}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("errors {task.fields[errors]}"),
                TimeElapsedColumn(),
                console=progress_console,
            ) as bar:
                task = bar.add_task(mode, total=count, errors=0)

                def on_progress(done: int, failed: int) -> None:
                    bar.update(task, completed=done, errors=failed)

                result = run_load(spec, generator.value, on_progress)
                bar.update(task, completed=result.requests)
    report = {
        "mode": mode,
        "leader": leader,
        "target": url,
        "target_role": "leader" if loaded == leader else "follower",
        "result": result.to_json(),
        "leader_events": [
            {"t": round(e.t - offset, 3), "leader": e.leader, "term": e.term} for e in watch.events
        ],
        "leader_changes": leader_changes(watch.events),
    }
    if plot is not None:
        from raftkv.bench.plot import plot_run

        plot_run(result, watch.events, plot, f"raftkv bench {mode} c={concurrency}", offset)
        report["plot"] = str(plot)
    return report, result, watch


def register(app: typer.Typer) -> None:
    bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (wrk, or Python without it).")
    app.add_typer(bench_app, name="bench")

    def make(mode: str) -> None:
        @bench_app.command(name=mode, help=f"{mode.capitalize()} benchmark: N requests.")
        def _run(
            count: Annotated[int, typer.Argument(help="number of requests", min=1)],
            address: Annotated[str, typer.Option("--address", "-a")] = DEFAULT_ADDRESS,
            concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1)] = 64,
            value_size: Annotated[int, typer.Option("--value-size", min=0)] = 100,
            consistency: Annotated[Consistency, typer.Option()] = Consistency.linearizable,
            read_ratio: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.5,
            keys: Annotated[int, typer.Option(help="read key space", min=1)] = 1000,
            generator: Annotated[Gen, typer.Option()] = Gen.auto,
            as_json: Annotated[bool, typer.Option("--json")] = False,
            plot: Annotated[Path | None, typer.Option("--plot", help="write a PNG")] = None,
            target: Annotated[
                Target,
                typer.Option(
                    help="load the leader, or a follower (writes are then forwarded to the leader)"
                ),
            ] = Target.leader,
        ) -> None:
            err = Console(stderr=True)
            try:
                report, result, _ = bench_once(
                    mode,
                    count,
                    address=address,
                    concurrency=concurrency,
                    value_size=value_size,
                    consistency=consistency.value,
                    read_ratio=read_ratio,
                    keys=keys,
                    generator=generator,
                    plot=plot,
                    progress_console=err if err.is_terminal else None,
                    target=target.value,
                )
            except (LoadError, OSError) as exc:
                err.print(f"raftkv bench: {exc}")
                raise typer.Exit(2) from None
            if as_json:
                _print_json(report)
            else:
                render_result(Console(), report)
            ok = result.requests - result.error_count
            raise typer.Exit(0 if ok > 0 else 1)

    for mode in ("writes", "reads", "mixed"):
        make(mode)

    @bench_app.command(name="compare-etcd")
    def compare_etcd(
        quick: Annotated[bool, typer.Option(help="short smoke run")] = False,
        rounds: Annotated[int | None, typer.Option(min=1)] = None,
        duration: Annotated[float | None, typer.Option(help="seconds per load run")] = None,
        failovers: Annotated[int | None, typer.Option(min=0)] = None,
        stability: Annotated[float | None, typer.Option(help="saturating PUT run, s")] = None,
        workdir: Annotated[Path, typer.Option(help="data dirs (a real disk)")] = Path(
            "/var/tmp/raftkv-compare"
        ),
        out: Annotated[Path | None, typer.Option("--out", help="also write the table")] = None,
        as_json: Annotated[bool, typer.Option("--json")] = False,
        only: Annotated[
            list[str] | None,
            typer.Option(
                "--only",
                help="run only this load (repeatable): put_c1, put_c64, put_c256, get_lin_c64, "
                "get_lease_c64, get_stale_c64; no stability run or failovers unless asked",
            ),
        ] = None,
    ) -> None:
        """raftkv vs etcd 3.4 on this machine, same wrk load, alternating; markdown table."""
        err = Console(stderr=True)
        try:
            opts = CompareOptions.make(
                quick=quick, rounds=rounds, duration_s=duration, failovers=failovers,
                stability_s=stability, workdir=workdir, only=tuple(only or ()),
            )  # fmt: skip
        except ValueError as exc:
            err.print(f"raftkv bench compare-etcd: {exc}")
            raise typer.Exit(2) from None
        try:
            report = run_compare(
                opts, log=lambda msg: err.print(msg, highlight=False, soft_wrap=True)
            )
        except (LoadError, ClusterError) as exc:
            err.print(f"raftkv bench compare-etcd: {exc}")
            raise typer.Exit(2) from None
        table = markdown(report)
        if out is not None:
            out.write_text(table)
        if as_json:
            _print_json(report)
        else:
            sys.stdout.write(table)
