"""The firewall's nft scripts, run against a fake `nft` that records what it is asked."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from raftkv.chaos import netfilter
from raftkv.chaos.netfilter import Endpoint, Firewall, FirewallError, link_rules

A = Endpoint("127.0.0.1", (9001, 8001))
B = Endpoint("127.0.0.2", (9002, 8002))

FAKE_NFT = """#!{python}
import sys, pathlib
log = pathlib.Path({log!r})
args = sys.argv[1:]
data = sys.stdin.read() if args == ["-f", "-"] else ""
with log.open("a") as f:
    f.write(" ".join(args) + "\\n" + data + "----\\n")
if args == ["list", "tables"]:
    sys.stdout.write(pathlib.Path({tables!r}).read_text())
if "fail" in data:
    sys.stderr.write("Error: syntax error")
    sys.exit(1)
"""


@pytest.fixture
def fake_nft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    log, tables = tmp_path / "nft.log", tmp_path / "tables"
    tables.write_text("")
    nft = tmp_path / "nft"
    nft.write_text(FAKE_NFT.format(python=sys.executable, log=str(log), tables=str(tables)))
    nft.chmod(0o755)
    monkeypatch.setattr(netfilter.os, "geteuid", lambda: 0)
    return nft, log, tables


def test_a_link_drops_what_src_sends_to_dst_in_the_cluster_only() -> None:
    assert link_rules("t", (A, B)) == [
        "add rule inet t cut ip saddr 127.0.0.1 ip daddr 127.0.0.2 tcp dport { 8002, 9002 } drop",
        "add rule inet t cut ip saddr 127.0.0.1 ip daddr 127.0.0.2 tcp sport { 8001, 9001 } drop",
    ]


def test_open_cut_heal_close(fake_nft: tuple[Path, Path, Path]) -> None:
    nft, log, _ = fake_nft
    fw = Firewall(nft=str(nft), table="raftkv_chaos_test")
    fw.open()
    text = log.read_text()
    assert "add table inet raftkv_chaos_test" in text
    assert "type filter hook output priority 0; policy accept;" in text
    fw.cut([(A, B), (B, A)])
    assert fw.links == ((A, B), (B, A))
    last = log.read_text().split("----\n")[-2]
    assert last.startswith(
        "-f -\nflush chain inet raftkv_chaos_test cut\n"
    )  # replaces, never stacks
    assert last.count("drop") == 4
    fw.heal()
    assert fw.links == ()
    assert log.read_text().split("----\n")[-2] == "-f -\nflush chain inet raftkv_chaos_test cut\n"
    fw.close()
    fw.close()  # idempotent
    assert log.read_text().count("delete table inet raftkv_chaos_test") == 1
    with pytest.raises(FirewallError):
        fw.cut([(A, B)])


def test_tables_of_dead_runs_are_removed(fake_nft: tuple[Path, Path, Path]) -> None:
    nft, log, tables = fake_nft
    dead = 4_000_000  # above pid_max: no such process
    tables.write_text(
        f"table inet raftkv_chaos_{dead}\ntable inet raftkv_chaos_{os.getpid()}\n"
        "table inet filter\ntable inet raftkv_chaos_1\n"  # pid 1 lives
    )
    fw = Firewall(nft=str(nft), table="raftkv_chaos_mine")
    assert fw.remove_stale_tables() == [f"raftkv_chaos_{dead}"]
    assert f"delete table inet raftkv_chaos_{dead}" in log.read_text()


def test_failures_are_reported_with_the_script(fake_nft: tuple[Path, Path, Path]) -> None:
    nft, _, _ = fake_nft
    fw = Firewall(nft=str(nft), table="fail")  # the fake fails on any script naming "fail"
    with pytest.raises(FirewallError, match="syntax error"):
        fw.open()
    fw.close()  # after a failed open: nothing to do, no error


def test_unavailable_without_nft_or_root(monkeypatch: pytest.MonkeyPatch) -> None:
    assert netfilter.nft_available("no-such-nft-binary") is not None
    monkeypatch.setattr(netfilter.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(netfilter.shutil, "which", lambda _: "/usr/sbin/nft")
    assert "root" in (netfilter.nft_available() or "")
    with pytest.raises(FirewallError, match="root"):
        Firewall().open()
