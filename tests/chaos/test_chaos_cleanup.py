"""A chaos run stopped by a signal mid-partition leaves no nftables table and no node behind."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.chaos.chaos_helpers import CLI, ROOT, needs_nft


def nft_rules(table: str) -> str:
    done = subprocess.run(
        ["nft", "list", "table", "inet", table], capture_output=True, text=True, check=False
    )
    return done.stdout if done.returncode == 0 else ""


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def interrupt_mid_partition(sig: signal.Signals, tmp_path: Path) -> int:
    cmd = [*CLI, "chaos", "network-partition", "--duration", "120", "--seed", "5"]
    cmd += ["--work-dir", str(tmp_path), "--faults", "isolate-follower,isolate-leader"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    table = f"raftkv_chaos_{proc.pid}"
    try:
        deadline = time.monotonic() + 90
        while "drop" not in nft_rules(table):  # wait until a partition is in force
            assert proc.poll() is None, "the run ended before any partition"
            assert time.monotonic() < deadline, "no partition within 90 s"
            time.sleep(0.1)
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert nft_rules(table) == "", "the nftables table outlived the run"
    assert processes_mentioning(str(tmp_path)) == [], "a node outlived the run"
    return code


@needs_nft
def test_sigterm_mid_partition_cleans_up(tmp_path: Path) -> None:
    assert interrupt_mid_partition(signal.SIGTERM, tmp_path) == 143


@pytest.mark.chaos
@needs_nft
def test_sigint_mid_partition_cleans_up(tmp_path: Path) -> None:
    assert interrupt_mid_partition(signal.SIGINT, tmp_path) == 130
