"""`raftkv chaos random-failures|network-partition|load-test-with-failures`: fault injection
against a private 3-node cluster, with the recorded history checked for linearizability.

Rules:
- One subcommand per scenario, all with the same options. The report goes to stdout (text, or
  JSON with `--json`); progress lines go to stderr.
- Exit codes: 0 pass, 1 anomaly found (the report holds a witness), 2 the run could not be
  carried out (bad option, the cluster never came up, nft failed), 3 inconclusive (the checker's
  budget ran out), 130/143 interrupted by SIGINT/SIGTERM (after cleaning up: nodes stopped,
  nftables table removed).
- Without `--seed` a random seed is drawn and printed, so any run can be repeated.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from raftkv.chaos.cluster import parse_node_cmd
from raftkv.chaos.nemesis import FAULTS
from raftkv.chaos.netfilter import FirewallError
from raftkv.chaos.report import EXIT_HARNESS, ChaosReport
from raftkv.chaos.run import SCENARIOS, ChaosOptions, HarnessError, run_chaos

NODE_CMD_ENV = "RAFTKV_CHAOS_NODE_CMD"


def _say(line: str) -> None:
    print(f"[chaos] {line}", file=sys.stderr, flush=True)


async def _main(opts: ChaosOptions) -> ChaosReport:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    return await run_chaos(opts, _say)


def _run(opts: ChaosOptions) -> ChaosReport:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.Runner()
    with runner:
        return runner.run(_main(opts))


def _faults(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        raise typer.BadParameter(
            f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}",
            param_hint="--faults",
        )
    return names


def _command(scenario: str) -> Callable[..., None]:
    def command(
        duration: Annotated[
            float, typer.Option("--duration", min=5.0, help="seconds of workload and faults")
        ] = 60.0,
        seed: Annotated[int | None, typer.Option("--seed", help="seed (default: random)")] = None,
        keep_data: Annotated[
            bool, typer.Option("--keep-data", help="keep the run directory (logs, data)")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
        history: Annotated[
            Path | None, typer.Option("--history", help="also write the history (JSONL) here")
        ] = None,
        faults: Annotated[
            str | None,
            typer.Option("--faults", help=f"comma-separated subset of: {', '.join(FAULTS)}"),
        ] = None,
        clients: Annotated[int | None, typer.Option("--clients", min=1, max=256)] = None,
        keys: Annotated[int | None, typer.Option("--keys", min=1, max=1000)] = None,
        nodes: Annotated[int, typer.Option("--nodes", min=1, max=9)] = 3,
        node_cmd: Annotated[
            str | None,
            typer.Option(
                "--node-cmd",
                envvar=NODE_CMD_ENV,
                help="command prefix that starts a node (before `serve --config ...`)",
            ),
        ] = None,
        work_dir: Annotated[
            Path | None, typer.Option("--work-dir", help="parent of the run directory")
        ] = None,
        snapshot_every: Annotated[int, typer.Option("--snapshot-every", min=1)] = 500,
    ) -> None:
        if seed is None:
            seed = random.SystemRandom().randrange(1 << 32)
        opts = ChaosOptions(
            scenario=scenario,
            duration_s=duration,
            seed=seed,
            node_count=nodes,
            clients=clients,
            keys=keys,
            faults=_faults(faults),
            node_cmd=tuple(parse_node_cmd(node_cmd)),
            work_dir=work_dir,
            keep_data=keep_data,
            history_path=history,
            snapshot_every=snapshot_every,
        )
        try:
            report = _run(opts)
        except (HarnessError, FirewallError) as exc:
            print(f"raftkv chaos: {exc}", file=sys.stderr)
            raise typer.Exit(EXIT_HARNESS) from None
        except KeyboardInterrupt:
            print("raftkv chaos: interrupted; cluster stopped, firewall removed", file=sys.stderr)
            raise typer.Exit(130) from None
        except asyncio.CancelledError:  # SIGTERM / SIGHUP cancelled the run
            print("raftkv chaos: terminated; cluster stopped, firewall removed", file=sys.stderr)
            raise typer.Exit(143) from None
        if as_json:
            sys.stdout.buffer.write(report.to_json() + b"\n")
        else:
            print(report.render())
        sys.stdout.flush()
        raise typer.Exit(report.exit_code)

    command.__doc__ = f"{SCENARIOS[scenario].summary}; checks linearizability."
    return command


def register(app: typer.Typer) -> None:
    chaos = typer.Typer(
        no_args_is_help=True,
        help="Fault injection on a private 3-node cluster, checked for linearizability.",
    )
    for scenario in SCENARIOS:
        chaos.command(name=scenario)(_command(scenario))
    app.add_typer(chaos, name="chaos")
