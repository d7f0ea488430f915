"""The concurrent client workload, recorded as a `raftkv.check` history.

Rules:
- Each client runs one op at a time against a node picked at random: put (a value never written
  before: "<client>.<seq>"), get (linearizable, the API default), delete, or compare-and-set
  (from the value the client last saw for the key: as a one-key POST /txn whose failure branch
  reads the key, or as a PUT with If-Match / If-None-Match), on one of a few keys. Replies'
  revisions are recorded for `raftkv.check.revisions`.
- Every op is recorded exactly once, with `invoke` taken before connecting and `complete` after
  the reply: both from the run's one monotonic clock.
- Outcomes (the mapping is `classify_reply` / `classify_failure`, unit-tested):
  OK      200; a get's or delete's 404 `key_not_found` (absent / existed=False);
  FAIL    503 `no_leader`, `not_leader`, `leader_unreachable` (refused before being proposed),
          a connect failure (nothing sent), and any failed get (a read has no effect);
  UNKNOWN a write's 504 (`timeout`, `outcome_unknown`), 503 `node_stopping`, and any failure
          after connecting (reset, closed, client timeout): it may have taken effect.
  Any other reply (a 500, a 400, a malformed body) is *unexpected*: a write counts as UNKNOWN,
  a get as FAIL, and the reply is kept for the report as an anomaly.
- A prober (`run_prober`) puts to one extra key on every node at a fixed rate, so that the
  failover time does not depend on what the clients happen to be stuck on; its ops are part of
  the history like any other.
- The per-op `Event` list (end time, outcome, reason) feeds the availability timeline; the
  history alone cannot, since an UNKNOWN op has no completion time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from raftkv.chaos import httpclient
from raftkv.chaos.cluster import NodeSpec
from raftkv.check import History, OpKind, Outcome

DEFINITE_REFUSALS: Final = frozenset({"no_leader", "not_leader", "leader_unreachable"})
MAYBE_APPLIED: Final = frozenset({"timeout", "outcome_unknown", "node_stopping"})
FAILURE_BACKOFF_S: Final = 0.05
_METHODS: Final = {OpKind.PUT: "PUT", OpKind.GET: "GET", OpKind.DELETE: "DELETE"}


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    clients: int = 8
    keys: int = 5
    think_s: float = 0.01  # each client pauses uniform(0, think_s) between ops
    put_weight: float = 0.45
    get_weight: float = 0.4
    delete_weight: float = 0.15
    cas_weight: float = 0.0  # compare-and-set: half through POST /txn, half with If-Match
    timeout_s: float = 3.0  # per op, connect included
    connect_timeout_s: float = 1.0

    def key_names(self) -> list[str]:
        return [f"k{i}" for i in range(self.keys)]


@dataclass(frozen=True, slots=True)
class Classified:
    outcome: Outcome
    reason: str  # "ok", an API error code, or how the connection failed
    value: str | None = None  # what an OK get observed
    existed: bool | None = None  # what an OK delete reported
    unexpected: bool = False  # a reply the API should never give
    revision: int | None = None  # a write's revision, a get's mod_revision


class Event(msgspec.Struct, frozen=True):
    """One op as the timeline sees it (also written to `events.jsonl` for a closer look)."""

    op_id: int
    start: float  # the op's invoke
    end: float  # when the client heard back or gave up
    kind: OpKind
    outcome: Outcome
    reason: str
    node: str


def classify_reply(kind: OpKind, key: str, reply: httpclient.Reply) -> Classified:
    doc = reply.json()
    code = doc.get("code") if doc is not None else None
    write = kind is not OpKind.GET
    if reply.status == 200 and doc is not None:
        match kind:
            case OpKind.PUT | OpKind.CAS:
                return Classified(Outcome.OK, "ok", revision=_int(doc.get("revision")))
            case OpKind.DELETE:
                return Classified(Outcome.OK, "ok", existed=True)
            case OpKind.GET:
                value = doc.get("value")
                if isinstance(value, str) and doc.get("key") == key:
                    rev = _int(doc.get("mod_revision"))
                    return Classified(Outcome.OK, "ok", value=value, revision=rev)
    if reply.status == 404 and code == "key_not_found":
        match kind:
            case OpKind.GET:
                return Classified(Outcome.OK, "ok")
            case OpKind.DELETE:
                return Classified(Outcome.OK, "ok", existed=False)
    if isinstance(code, str):
        if reply.status == 503 and code in DEFINITE_REFUSALS:
            return Classified(Outcome.FAIL, code)
        if reply.status in (503, 504) and code in MAYBE_APPLIED:
            return Classified(Outcome.UNKNOWN if write else Outcome.FAIL, code)
    reason = f"http_{reply.status}" + (f"_{code}" if isinstance(code, str) else "")
    return Classified(Outcome.UNKNOWN if write else Outcome.FAIL, reason, unexpected=True)


def _int(raw: object) -> int | None:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) else None


def cas_request(
    key: str, expect: str | None, expect_rev: int | None, value: str, *, use_txn: bool
) -> tuple[str, str, bytes, dict[str, str]]:
    """(method, path, body, headers) of a compare-and-set: a one-key transaction whose failure
    branch reads the key, or a PUT with If-Match (the revision at which `expect` was read) /
    If-None-Match: * (expect absent)."""
    if use_txn or (expect is not None and expect_rev is None):
        if expect is None:
            compare = {"key": key, "target": "version", "op": "==", "value": 0}
        else:
            compare = {"key": key, "target": "value", "op": "==", "value": expect}
        doc = {
            "compare": [compare],
            "success": [{"op": "put", "key": key, "value": value}],
            "failure": [{"op": "get", "key": key}],
        }
        return "POST", "/txn", msgspec.json.encode(doc), {"Content-Type": "application/json"}
    cond = {"If-None-Match": "*"} if expect is None else {"If-Match": f'"{expect_rev}"'}
    return "PUT", f"/kv/{key}", value.encode(), cond


def classify_cas(
    reply: httpclient.Reply,
) -> tuple[Classified, tuple[str | None, int | None] | None]:
    """A CAS reply: the CAS's own outcome, and (value, mod_revision) the server said the key
    held when it refused (None when it did not say)."""
    doc = reply.json()
    if reply.status == 200 and doc is not None and "succeeded" in doc:
        rev = _int(doc.get("revision"))
        if doc.get("succeeded") is True:
            return Classified(Outcome.OK, "ok", revision=rev), None
        results = doc.get("results")
        items = results[0].get("items") if isinstance(results, list) and results else None
        if isinstance(items, list):
            if not items:
                return Classified(Outcome.FAIL, "compare_failed"), (None, None)
            got = items[0].get("value")
            if isinstance(got, str):
                return Classified(Outcome.FAIL, "compare_failed"), (
                    got,
                    _int(items[0].get("mod_revision")),
                )
        return Classified(Outcome.UNKNOWN, "http_200_bad_txn_reply", unexpected=True), None
    if reply.status == 412 and doc is not None and doc.get("code") == "precondition_failed":
        return Classified(Outcome.FAIL, "precondition_failed"), None
    return classify_reply(OpKind.CAS, "", reply), None


def classify_failure(kind: OpKind, exc: httpclient.NotSent | httpclient.MaybeSent) -> Classified:
    if isinstance(exc, httpclient.NotSent) or kind is OpKind.GET:
        return Classified(Outcome.FAIL, str(exc))
    return Classified(Outcome.UNKNOWN, str(exc))


class Recorder:
    """The history, the timeline events and the unexpected replies of one run."""

    def __init__(self, t0: float | None = None) -> None:
        self.t0 = time.monotonic() if t0 is None else t0
        self.history = History()
        self.events: list[Event] = []
        self.unexpected: list[str] = []  # one line per unexpected reply
        self.reasons: Counter[str] = Counter()

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 6)

    async def perform(
        self,
        client: str,
        kind: OpKind,
        key: str,
        node: NodeSpec,
        spec: WorkloadSpec,
        *,
        value: str | None = None,
        source_ip: str | None = None,
    ) -> Classified:
        """Send one op to `node`, recording its invoke and its outcome."""
        start = self.now()
        op_id = self.history.invoke(client, kind, key, value, at=start)
        body = value.encode() if value is not None else b""
        try:
            reply = await httpclient.request(
                _METHODS[kind],
                node.host,
                node.http_port,
                f"/kv/{key}",
                body=body,
                source_ip=source_ip,
                connect_timeout_s=spec.connect_timeout_s,
                timeout_s=spec.timeout_s,
            )
        except (httpclient.NotSent, httpclient.MaybeSent) as exc:
            result = classify_failure(kind, exc)
        else:
            result = classify_reply(kind, key, reply)
            if result.unexpected:
                self.unexpected.append(
                    f"{_METHODS[kind]} /kv/{key} on {node.node_id}: {reply.status} "
                    f"{reply.body[:200].decode('utf-8', 'replace')}"
                )
        end = self.now()
        match result.outcome:
            case Outcome.OK:
                self.history.ok(
                    op_id,
                    at=end,
                    value=result.value,
                    existed=result.existed,
                    revision=result.revision,
                )
            case Outcome.FAIL:
                self.history.fail(op_id, at=end)
            case Outcome.UNKNOWN:
                self.history.unknown(op_id)
        self.events.append(
            Event(op_id, start, end, kind, result.outcome, result.reason, node.node_id)
        )
        self.reasons[result.reason] += 1
        return result

    async def perform_cas(
        self,
        client: str,
        key: str,
        expect: tuple[str | None, int | None],
        value: str,
        node: NodeSpec,
        spec: WorkloadSpec,
        *,
        use_txn: bool,
        source_ip: str | None = None,
    ) -> tuple[Classified, tuple[str | None, int | None] | None]:
        """A compare-and-set; a refusal that names the current value is also recorded as the
        get it is (same interval: the server read the key inside it)."""
        start = self.now()
        op_id = self.history.cas(client, key, expect[0], value, at=start)
        method, path, body, headers = cas_request(key, *expect, value, use_txn=use_txn)
        seen: tuple[str | None, int | None] | None = None
        try:
            reply = await httpclient.request(
                method,
                node.host,
                node.http_port,
                path,
                body=body,
                headers=headers,
                source_ip=source_ip,
                connect_timeout_s=spec.connect_timeout_s,
                timeout_s=spec.timeout_s,
            )
        except (httpclient.NotSent, httpclient.MaybeSent) as exc:
            result = classify_failure(OpKind.CAS, exc)
        else:
            result, seen = classify_cas(reply)
            if result.unexpected:
                self.unexpected.append(
                    f"{method} {path} (cas {key}) on {node.node_id}: {reply.status} "
                    f"{reply.body[:200].decode('utf-8', 'replace')}"
                )
        end = self.now()
        match result.outcome:
            case Outcome.OK:
                self.history.ok(op_id, at=end, revision=result.revision)
            case Outcome.FAIL:
                self.history.fail(op_id, at=end)
                if seen is not None:
                    get_id = self.history.get(client, key, at=start)
                    self.history.ok(get_id, at=end, value=seen[0], revision=seen[1])
            case Outcome.UNKNOWN:
                self.history.unknown(op_id)
        self.events.append(
            Event(op_id, start, end, OpKind.CAS, result.outcome, result.reason, node.node_id)
        )
        self.reasons[result.reason] += 1
        return result, seen


async def run_client(
    index: int,
    spec: WorkloadSpec,
    nodes: Sequence[NodeSpec],
    recorder: Recorder,
    rng: random.Random,
    stop: asyncio.Event,
    source_ip: str | None,
) -> None:
    """One client: ops back to back (with a little think time) until `stop` is set."""
    client = f"c{index}"
    keys = spec.key_names()
    kinds = [OpKind.PUT, OpKind.GET, OpKind.DELETE, OpKind.CAS]
    weights = [spec.put_weight, spec.get_weight, spec.delete_weight, spec.cas_weight]
    seen: dict[str, tuple[str | None, int | None]] = {}  # key -> (value, mod_revision) last seen
    seq = 0
    while not stop.is_set():
        kind = rng.choices(kinds, weights)[0]
        key = rng.choice(keys)
        node = rng.choice(nodes)
        value = None
        if kind in (OpKind.PUT, OpKind.CAS):
            seq += 1
            value = f"{client}.{seq}"
        if kind is OpKind.CAS:
            assert value is not None
            expect = seen.get(key, (None, None))
            result, current = await recorder.perform_cas(
                client,
                key,
                expect,
                value,
                node,
                spec,
                use_txn=rng.random() < 0.5,
                source_ip=source_ip,
            )
            if result.outcome is Outcome.OK:
                seen[key] = (value, result.revision)
            elif current is not None:
                seen[key] = current
        else:
            result = await recorder.perform(
                client, kind, key, node, spec, value=value, source_ip=source_ip
            )
            if result.outcome is Outcome.OK:
                if kind is OpKind.GET:
                    seen[key] = (result.value, result.revision)
                elif kind is OpKind.PUT:
                    seen[key] = (value, result.revision)
                else:
                    seen[key] = (None, None)
        pause = spec.think_s
        if result.outcome is not Outcome.OK:
            pause = max(pause, FAILURE_BACKOFF_S)  # a dead node refuses at once: don't spin on it
        await asyncio.sleep(rng.uniform(0, pause))  # 0 too: let the nemesis and the others run


PROBE_KEY: Final = "probe"
PROBE_CLIENT: Final = "probe"


async def run_prober(
    spec: WorkloadSpec,
    nodes: Sequence[NodeSpec],
    recorder: Recorder,
    stop: asyncio.Event,
    source_ip: str | None,
    interval_s: float = 0.05,
    max_in_flight: int = 4,
) -> None:
    """Every `interval_s`, a put of a fresh value to `PROBE_KEY` on every node (at most
    `max_in_flight` waiting per node), whatever the other clients are stuck on: the failover
    time is then measured to within `interval_s`, not to within a client's timeout. `nodes`
    may change meanwhile (the membership scenario): each round probes the nodes it holds then."""
    in_flight: Counter[str] = Counter()
    tasks: set[asyncio.Task[Classified]] = set()
    seq = 0

    async def probe(node: NodeSpec, value: str) -> Classified:
        in_flight[node.node_id] += 1
        try:
            return await recorder.perform(
                PROBE_CLIENT, OpKind.PUT, PROBE_KEY, node, spec, value=value, source_ip=source_ip
            )
        finally:
            in_flight[node.node_id] -= 1

    try:
        while not stop.is_set():
            for node in list(nodes):
                if in_flight[node.node_id] < max_in_flight:
                    seq += 1
                    task = asyncio.create_task(probe(node, f"{PROBE_CLIENT}.{seq}"))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await stop.wait()
    finally:
        await asyncio.gather(*tasks, return_exceptions=True)
