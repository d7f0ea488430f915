"""Network partitions between the chaos cluster's nodes, cut with nftables in a table of our own.

Rules:
- Every rule lives in one table, `inet raftkv_chaos_<pid>`: created by `open()`, deleted by
  `close()`. `close` is idempotent and registered with `atexit` on open, and the runner calls it
  in a `finally`, so the table is gone after any exit Python gets to see (a signal turned into an
  exception included). A run killed with SIGKILL cannot clean up: its pid is in the table name,
  and the next `open()` deletes tables whose process no longer exists.
- A cut link (src -> dst) drops every packet src sends to dst *within the cluster*: to dst's
  listeners (`tcp dport`) and from src's listeners back to dst (`tcp sport`). Matching the
  cluster's ports as well as the addresses leaves everything else on 127.0.0.x alone (the
  chaos clients, a developer's cluster, other tests), so two runs can even share addresses.
- A two-way cut is two links; a one-way cut is one. `cut` replaces the whole rule set, `heal`
  removes it: faults never stack by accident.
- Drop, not reject: a partition looks like silence, as a real one does (TCP retransmits, the
  peers' timeouts decide).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

TABLE_PREFIX: Final = "raftkv_chaos_"
_CHAIN: Final = "cut"
_TABLE_RE: Final = re.compile(rf"^table inet ({TABLE_PREFIX}(\d+))$", re.MULTILINE)


class FirewallError(RuntimeError):
    """nft failed or is unavailable; the message says which command and why."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One node as the firewall sees it: its address and the ports it listens on."""

    host: str
    ports: tuple[int, ...]


Link = tuple[Endpoint, Endpoint]  # (src, dst): packets from src to dst are dropped


def nft_available(nft: str = "nft") -> str | None:
    """None when partitions can be cut here, else the reason they cannot."""
    if shutil.which(nft) is None:
        return f"{nft} (nftables) is not installed"
    if os.geteuid() != 0:
        return "cutting partitions with nftables needs root"
    return None


def link_rules(table: str, link: Link) -> list[str]:
    """The nft commands that drop what `src` sends to `dst` inside the cluster."""
    src, dst = link
    head = f"add rule inet {table} {_CHAIN} ip saddr {src.host} ip daddr {dst.host}"
    return [
        f"{head} tcp dport {_set(dst.ports)} drop",  # src's requests to dst's listeners
        f"{head} tcp sport {_set(src.ports)} drop",  # src's replies on connections dst opened
    ]


def _set(ports: tuple[int, ...]) -> str:
    return "{ " + ", ".join(str(p) for p in sorted(ports)) + " }"


class Firewall:
    """The chaos run's nftables table. Not thread-safe; one per run."""

    def __init__(self, nft: str = "nft", table: str | None = None) -> None:
        self._nft = nft
        self.table = table or f"{TABLE_PREFIX}{os.getpid()}"
        self._open = False
        self.links: tuple[Link, ...] = ()  # currently cut

    def open(self) -> None:
        if self._open:
            return
        reason = nft_available(self._nft)
        if reason is not None:
            raise FirewallError(reason)
        self.remove_stale_tables()
        self._run(
            [
                f"add table inet {self.table}",
                # Loopback packets pass the output hook once, on the sending side.
                f"add chain inet {self.table} {_CHAIN} "
                "{ type filter hook output priority 0; policy accept; }",
            ]
        )
        self._open = True
        atexit.register(self.close)

    def cut(self, links: Iterable[Link]) -> None:
        """Replace the current cut with `links` (atomically: one nft transaction)."""
        if not self._open:
            raise FirewallError("the firewall is not open")
        wanted = tuple(links)
        commands = [f"flush chain inet {self.table} {_CHAIN}"]
        for link in wanted:
            commands += link_rules(self.table, link)
        self._run(commands)
        self.links = wanted

    def heal(self) -> None:
        if self._open and self.links:
            self._run([f"flush chain inet {self.table} {_CHAIN}"])
        self.links = ()

    def close(self) -> None:
        """Delete the table. Safe to call more than once, and after a failed open."""
        if not self._open:
            return
        self._open = False
        self.links = ()
        atexit.unregister(self.close)
        self._run([f"delete table inet {self.table}"], check=False)

    def listing(self) -> str:
        """The table as nft prints it (for a report or a failing test)."""
        done = self._exec(["list", "table", "inet", self.table], None)
        return done.stdout if done.returncode == 0 else ""

    def remove_stale_tables(self) -> list[str]:
        """Delete tables of chaos runs whose process is gone; returns their names."""
        done = self._exec(["list", "tables"], None)
        stale = [
            name
            for name, pid in _TABLE_RE.findall(done.stdout)
            if name != self.table and not os.path.exists(f"/proc/{pid}")
        ]
        if stale:
            self._run([f"delete table inet {name}" for name in stale], check=False)
        return stale

    def _run(self, commands: list[str], *, check: bool = True) -> None:
        script = "".join(c + "\n" for c in commands)
        done = self._exec(["-f", "-"], script)
        if check and done.returncode != 0:
            raise FirewallError(f"nft failed ({done.returncode}): {done.stderr.strip()}\n{script}")

    def _exec(self, args: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self._nft, *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FirewallError(f"cannot run {self._nft}: {exc}") from exc
