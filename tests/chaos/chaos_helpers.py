"""Running `raftkv chaos` as a subprocess, as an operator would, and reading its JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from raftkv.chaos.netfilter import nft_available

ROOT = Path(__file__).resolve().parents[2]
WEAK_NODE = Path(__file__).resolve().parent / "weak_node.py"
CLI = [sys.executable, "-c", "from raftkv.cli.main import main; main()"]

needs_nft = pytest.mark.skipif(
    nft_available() is not None,
    reason=f"chaos runs cut partitions with nftables: {nft_available()}",
)


@dataclass(frozen=True)
class Run:
    returncode: int
    report: dict[str, Any]
    stderr: str

    def explain(self) -> str:
        """What to print when an assertion about the run fails."""
        r = self.report
        lines = [f"exit {self.returncode}; anomalies: {r.get('anomalies')}"]
        lines += r.get("linearizability", {}).get("witnesses", [])[:2]
        lines += [str(w) for w in r.get("lost_writes", [])[:3]]
        lines += r.get("divergence", []) + r.get("unexpected", [])[:3]
        lines += [
            f"{c['node']} exited {c['returncode']}:\n{c['log_tail']}" for c in r.get("crashes", [])
        ]
        lines += r.get("problems", [])
        lines.append(f"data kept in {r.get('work_dir')}")
        lines.append(self.stderr[-3000:])
        return "\n".join(str(line) for line in lines)


def run_chaos(scenario: str, work_dir: Path, *args: str, duration: float) -> Run:
    cmd = [*CLI, "chaos", scenario, "--duration", str(duration), "--json"]
    cmd += ["--work-dir", str(work_dir), *args]
    done = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=duration + 240, check=False
    )
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = {}
    return Run(done.returncode, report, done.stderr)
