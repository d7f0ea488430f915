"""The ledger: a writer of fresh keys, each written once, and the check that every member holds
every acknowledged one at the end.

Rules:
- The workload's keys are overwritten all the time, so an old acknowledged write that went
  missing (say, from a snapshot a new member installed) would be invisible in them. The ledger
  writes `ledger-NNNNNN` once each, through a node picked at random among the current ones, and
  its ops join the history like any other client's.
- At the end, once every member has applied the same index, every member's applied keys under
  the prefix are listed (`GET /debug/keys`, a local read): each acknowledged ledger write must be
  there with its value, and no write the API refused (a definite failure: nothing was applied)
  may be there. An unknown outcome may go either way.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from raftkv.chaos import httpclient
from raftkv.chaos.cluster import Cluster, NodeSpec
from raftkv.chaos.workload import Recorder, WorkloadSpec
from raftkv.check import Op, OpKind, Outcome

LEDGER_CLIENT: Final = "ledger"
LEDGER_PREFIX: Final = "ledger-"
PAGE: Final = 1000


@dataclass(frozen=True, slots=True)
class LedgerResult:
    acknowledged: int
    refused: int
    nodes: tuple[str, ...]  # the members checked
    missing: tuple[str, ...]  # "key=value on node: found ..."
    refused_present: tuple[str, ...]
    problems: tuple[str, ...]  # a member that could not be listed

    def anomalies(self) -> list[str]:
        found = []
        if self.missing:
            found.append(f"acknowledged ledger writes missing on a member: {len(self.missing)}")
        if self.refused_present:
            found.append(f"refused ledger writes present: {len(self.refused_present)}")
        return found + list(self.problems)

    def to_json(self) -> dict[str, object]:
        return {
            "acknowledged": self.acknowledged,
            "refused": self.refused,
            "nodes": list(self.nodes),
            "missing": list(self.missing),
            "refused_present": list(self.refused_present),
            "problems": list(self.problems),
        }


async def run_ledger(
    spec: WorkloadSpec,
    nodes: Sequence[NodeSpec],
    recorder: Recorder,
    rng: random.Random,
    stop: asyncio.Event,
    source_ip: str | None,
    interval_s: float = 0.05,
) -> None:
    """Put a fresh key every `interval_s` (one at a time) until `stop` is set."""
    n = 0
    while not stop.is_set():
        n += 1
        node = rng.choice(list(nodes))
        await recorder.perform(
            LEDGER_CLIENT,
            OpKind.PUT,
            f"{LEDGER_PREFIX}{n:06d}",
            node,
            spec,
            value=f"{LEDGER_CLIENT}.{n}",
            source_ip=source_ip,
        )
        await asyncio.sleep(interval_s)


def ledger_writes(ops: Iterable[Op]) -> tuple[dict[str, str], set[str]]:
    """(acknowledged key -> value, keys whose write was refused) of the ledger's puts."""
    acked: dict[str, str] = {}
    refused: set[str] = set()
    for op in ops:
        if op.client != LEDGER_CLIENT or op.kind is not OpKind.PUT or op.value is None:
            continue
        if op.outcome is Outcome.OK:
            acked[op.key] = op.value
        elif op.outcome is Outcome.FAIL:
            refused.add(op.key)
    return acked, refused


def compare(
    node: str, listing: dict[str, str], acked: dict[str, str], refused: set[str]
) -> tuple[list[str], list[str]]:
    """(missing, refused but present) on one member."""
    missing = [
        f"{key}={value!r} on {node}: found {listing.get(key)!r}"
        for key, value in sorted(acked.items())
        if listing.get(key) != value
    ]
    present = [f"{key} on {node}: {listing[key]!r}" for key in sorted(refused) if key in listing]
    return missing, present


async def list_keys(cluster: Cluster, node_id: str, prefix: str) -> dict[str, str]:
    """Every applied key under `prefix` on `node_id` (paged); raises on a failed page."""
    found: dict[str, str] = {}
    after: str | None = None
    while True:
        path = f"/debug/keys?prefix={quote(prefix)}&limit={PAGE}"
        if after is not None:
            path += f"&after={quote(after)}"
        reply = await cluster.admin(node_id, "GET", path, timeout_s=10.0)
        doc = reply.json() or {}
        items = doc.get("items")
        if reply.status != 200 or not isinstance(items, list):
            raise RuntimeError(f"{reply.status} {reply.body[:200]!r}")
        for item in items:
            if isinstance(item, dict):
                found[str(item.get("key"))] = str(item.get("value"))
        nxt = doc.get("next_after")
        if not isinstance(nxt, str) or not items:
            return found
        after = nxt


async def check_ledger(cluster: Cluster, ops: Iterable[Op]) -> LedgerResult:
    acked, refused = ledger_writes(ops)
    missing: list[str] = []
    present: list[str] = []
    problems: list[str] = []
    nodes = tuple(cluster.ids)
    for node in nodes:
        try:
            listing = await list_keys(cluster, node, LEDGER_PREFIX)
        except (httpclient.NotSent, httpclient.MaybeSent, RuntimeError) as exc:
            problems.append(f"ledger: cannot list {node}'s keys: {exc}")
            continue
        m, p = compare(node, listing, acked, refused)
        missing += m
        present += p
    return LedgerResult(
        len(acked), len(refused), nodes, tuple(missing), tuple(present), tuple(problems)
    )
