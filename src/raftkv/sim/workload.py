"""Simulated clients and the history they record.

Rules:
- Each client runs one operation at a time (a Jepsen "process"): put/delete on a few keys with
  values unique across the run, or a linearizable get through ReadIndex — or, for a
  `lease_ratio` share of gets, through the leader's lease (thesis §6.4.1), falling back to
  ReadIndex when the node holds no lease, as the real server does.
- A request reaches the chosen server after a delay; the server answers at once with a definite
  failure (down, NotLeader, ProposalDropped) or later: a write when the proposing node applies
  its (term, index) — `fail` if another entry landed there — and a read when the node's applied
  index reaches its ReadState's index.
- A write that times out or whose server crashed is `unknown` (it may still take effect); its
  client then continues as a new process, as Jepsen requires. A read that does not complete
  simply failed: it had no effect.
- Completion is recorded when the server answers (a sub-interval of what the client would see,
  which can only make the check stricter, never looser).
- Space (kv/quota.py), only when `space_ops` > 0: that share of operations are admin commands
  (kind "admin", not in the history): set the quota, raise or clear a member's disk alarm,
  compact to the highest revision a client has seen. A write refused with `NoSpace` changed
  nothing: it fails (or is unknown if an earlier attempt of a session write may have applied).
- Target choice: the client's believed leader (from NotLeader hints and successes) most of the
  time, else a random server. Clients stay with a silent leader for a while, which is what
  sends reads to an isolated old leader.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from raftkv.kv.commands import (
    Command,
    Compact,
    Compare,
    CompareOp,
    Delete,
    GetOp,
    OpenSession,
    Put,
    PutOp,
    RangeResult,
    SessionError,
    SessionRequest,
    SessionResult,
    Target,
    Txn,
    TxnResult,
)
from raftkv.kv.quota import Alarm, NoSpace, SetQuota
from raftkv.raft.errors import NotLeader, ProposalDropped
from raftkv.raft.rawnode import RawNode
from raftkv.raft.types import Entry, NodeId, ReadState
from raftkv.sim.scheduler import TICK, ClientArrive, ClientInvoke, ClientTimeout, Scheduler
from raftkv.sim.statemachine import KvMachine, encode_command

PENDING, OK, FAIL, UNKNOWN = "pending", "ok", "fail", "unknown"


@dataclass(slots=True)
class OpRecord:
    """One client operation of the history."""

    op_id: int
    process: int  # the Jepsen process: a client becomes a new process after an unknown outcome
    kind: str  # "put" | "get" | "delete" | "cas" | "session" (opening one; not in the history)
    key: str
    value: str | None  # put/cas: the value written; get: the value read (None = absent)
    invoke: int  # time of invocation
    node: NodeId  # the server it was (last) sent to
    status: str = PENDING
    complete: int = -1  # time of completion (-1 while pending)
    expect: str | None = None  # cas: the value it expects (None = absent)
    data: bytes = b""  # a write's entry data, re-sent unchanged by a session retry
    seq: int = 0  # > 0: a session write (retried after an unknown outcome)
    attempts: int = 0  # times proposed somewhere: > 0 means it may have been applied
    retries: int = 0  # session re-sends so far (<= max_retries)


@dataclass(frozen=True, slots=True)
class WorkloadOptions:
    clients: int = 4
    keys: tuple[str, ...] = ("a", "b", "c")
    think: int = TICK // 2  # mean pause between a client's operations
    backoff: int = 2 * TICK  # mean pause after a failed or indeterminate one
    request_delay: int = 100  # client -> server latency
    write_timeout: int = 12 * TICK
    read_timeout: int = 6 * TICK
    follow_guess: float = 0.75  # chance to use the believed leader when one is known
    read_ratio: float = 0.45
    delete_ratio: float = 0.1
    cas_ratio: float = 0.15  # one-key transactions: put if the value is what the client saw
    lease_ratio: float = 0.0  # share of gets asking for a lease read (needs lease_ticks > 0)
    sessions: bool = True  # writes go through client sessions and are retried (thesis §6.3)
    max_retries: int = 4  # session retries of one write before its outcome is left unknown
    session_ttl_ms: int = 1 << 40  # sessions never expire in a run (expiry is unit-tested)
    space_ops: float = 0.0  # share of admin ops: quota, disk alarms, MVCC compaction
    quota_bytes: int = 600  # the quota the admin ops set (kv/quota.py)


@dataclass(slots=True)
class _Client:
    cid: int
    process: int
    guess: NodeId | None = None
    current: int | None = None  # op id in flight
    session: int | None = None  # its session id, once opened
    seq: int = 0  # last session sequence number used
    seen: dict[str, str | None] = field(default_factory=dict)  # key -> value last seen


class Workload:
    def __init__(self, rng: random.Random, sched: Scheduler, options: WorkloadOptions) -> None:
        self.rng = rng
        self.sched = sched
        self.opt = options
        self.ops: list[OpRecord] = []
        self._clients = [_Client(c, c) for c in range(options.clients)]
        self._next_process = options.clients
        self._next_value = 0
        self.running = True  # False once the run winds down: no new operations
        self._writes: dict[NodeId, dict[int, tuple[int, int]]] = {}  # node -> index -> term, op
        self._read_ctx: dict[NodeId, dict[bytes, int]] = {}  # node -> ctx -> op awaiting index
        self._read_wait: dict[NodeId, list[tuple[int, int]]] = {}  # node -> (index, op) waiting
        self._read_floor: dict[int, int] = {}  # op -> commit index known when it began
        self._servers: list[NodeId] = []
        self.lease_reads = 0  # lease gets served from the lease
        self.lease_fallbacks = 0  # lease gets that fell back to ReadIndex
        self.stale: list[str] = []  # read indexes below what was committed when the read began
        self._max_revision = 0  # highest revision a client saw in a reply (admin compaction)

    def start(self) -> None:
        for c in self._clients:
            self.sched.push(self.rng.randrange(TICK * 4), ClientInvoke(c.cid))

    def pending(self) -> int:
        return sum(1 for c in self._clients if c.current is not None)

    # -- invocation ---------------------------------------------------------------------------
    def invoke(self, cid: int, servers: list[NodeId]) -> str | None:
        c = self._clients[cid]
        if not self.running or c.current is not None or not servers:
            return None
        self._servers = servers
        rng, opt = self.rng, self.opt
        key = rng.choice(opt.keys)
        r = rng.random()
        value: str | None = None
        expect: str | None = None
        cmd: Command | None = None
        if opt.sessions and c.session is None:
            kind, timeout = "session", opt.write_timeout
            cmd = OpenSession(opt.session_ttl_ms, self.sched.now)
        elif opt.space_ops and r < opt.space_ops:
            kind, timeout = "admin", opt.write_timeout
            cmd = self._admin(servers)
        elif r < opt.read_ratio:
            kind, timeout = "get", opt.read_timeout
            if opt.lease_ratio and rng.random() < opt.lease_ratio:
                kind = "lease_get"
        elif r < opt.read_ratio + opt.delete_ratio:
            kind, timeout = "delete", opt.write_timeout
            cmd = Delete(key)
        else:
            self._next_value += 1
            value, timeout = f"v{self._next_value}", opt.write_timeout
            if r < opt.read_ratio + opt.delete_ratio + opt.cas_ratio:
                kind, expect = "cas", c.seen.get(key)
                cond = (
                    Compare(key, Target.VERSION, CompareOp.EQ, 0)
                    if expect is None
                    else Compare(key, Target.VALUE, CompareOp.EQ, expect)
                )
                cmd = Txn([cond], [PutOp(key, value)], [GetOp(key)])
            else:
                kind, cmd = "put", Put(key, value)
        seq = 0
        if c.session is not None and isinstance(cmd, Put | Delete | Txn):
            c.seq += 1
            seq = c.seq
            cmd = SessionRequest(c.session, seq, 0, self.sched.now, cmd)
        if c.guess is not None and c.guess in servers and rng.random() < opt.follow_guess:
            node = c.guess
        else:
            node = rng.choice(servers)
        op = OpRecord(len(self.ops), c.process, kind, key, value, self.sched.now, node)
        op.expect, op.seq = expect, seq
        op.data = b"" if cmd is None else encode_command(cmd)
        self.ops.append(op)
        c.current = op.op_id
        self.sched.push(opt.request_delay, ClientArrive(cid, op.op_id, node))
        self.sched.push(timeout, ClientTimeout(cid, op.op_id))
        return f"{kind} {key}{'=' + value if value else ''} p{op.process} -> {node}"

    def _admin(self, servers: list[NodeId]) -> Command:
        pick = self.rng.randrange(6)
        if pick == 0:
            return SetQuota(self.opt.quota_bytes)
        if pick == 1:
            return Compact(self._max_revision)
        # Raised half as often as cleared, on one of two members, so writes get through too.
        return Alarm(self.rng.choice(sorted(servers)[:2]), pick == 2)

    def _retry(self, op: OpRecord) -> bool:
        """A session write whose outcome is unknown goes again, unchanged, to some server: the
        session makes a second apply impossible. False when out of retries (or not a session
        write, or already decided)."""
        if op.seq == 0 or op.status != PENDING or op.retries >= self.opt.max_retries:
            return False
        op.retries += 1
        cid = next(c.cid for c in self._clients if c.current == op.op_id)
        op.node = self.rng.choice(self._servers)
        # Back off first, as a real client does: a leaderless cluster must not become a storm.
        delay = self.opt.request_delay + int(self.rng.expovariate(1.0 / self.opt.backoff))
        self.sched.push(delay, ClientArrive(cid, op.op_id, op.node))
        self.sched.push(delay + self.opt.write_timeout, ClientTimeout(cid, op.op_id))
        return True

    def _refused(self, op: OpRecord, guess: NodeId | None) -> None:
        """A definite refusal of this attempt: the op failed, unless an earlier attempt of a
        session write may have been applied (then it is retried, or left unknown)."""
        if op.attempts == 0:
            self._complete(op.op_id, FAIL, guess=guess)
        elif not self._retry(op):
            self._complete(op.op_id, UNKNOWN, guess=None)

    def arrive_down(self, cid: int, op_id: int) -> None:
        """The server is down: connection refused, a definite failure (of this attempt)."""
        self._refused(self.ops[op_id], None)

    def arrive(
        self, cid: int, op_id: int, core: RawNode, known_commit: int, sm: KvMachine | None = None
    ) -> str:
        """The request reached a running server: hand it to the core (`sm`: its state).

        `known_commit` is the highest commit index any node had at this moment: a read's
        ReadIndex (or lease) result must not be below it (§6.4); a stale lease read index is
        added to `stale`."""
        op = self.ops[op_id]
        if op.status != PENDING:
            return "late"
        try:
            if op.kind == "lease_get":
                op.kind = "get"  # the history knows one kind of read
                index = core.lease_read_index()
                if index is not None:
                    self.lease_reads += 1
                    self._read_floor[op_id] = known_commit
                    problem = self._got_read_index(op.node, op_id, int(index))
                    if problem:
                        self.stale.append(problem)
                    if sm is not None:
                        self._serve_reads(op.node, sm)
                    return f"lease read at {index}"
                self.lease_fallbacks += 1
            if op.kind == "get":
                ctx = b"r%d" % op_id
                self._read_ctx.setdefault(op.node, {})[ctx] = op_id
                self._read_floor[op_id] = known_commit
                core.read_index(ctx)
                return "read_index"
            term, index = core.propose(op.data)
        except NotLeader as e:
            self._read_ctx.get(op.node, {}).pop(b"r%d" % op_id, None)
            hint = e.leader_hint if e.leader_hint != op.node else None
            self._refused(op, hint)
            return f"not leader (hint {hint})"
        except ProposalDropped:
            self._read_ctx.get(op.node, {}).pop(b"r%d" % op_id, None)
            self._refused(op, op.node)
            return "dropped"
        op.attempts += 1
        self._writes.setdefault(op.node, {})[int(index)] = (int(term), op_id)
        return f"proposed at {index} term {term}"

    def timeout(self, cid: int, op_id: int) -> bool:
        op = self.ops[op_id]
        if op.status != PENDING:
            return False
        keep = self.rng.random() < 0.5  # stubborn clients keep trying a silent leader
        if op.kind != "get" and self._retry(op):
            return True
        self._complete(
            op_id, FAIL if op.kind == "get" else UNKNOWN, guess=op.node if keep else None
        )
        return True

    # -- server side --------------------------------------------------------------------------
    def on_apply(self, node: NodeId, entry: Entry, sm: KvMachine) -> None:
        writes = self._writes.get(node)
        if writes:
            w = writes.pop(int(entry.index), None)
            if w is not None:
                term, op_id = w
                if term == entry.term:
                    self._applied(self.ops[op_id], node, sm)
                else:
                    self._refused(self.ops[op_id], None)  # another entry won the index
        self._serve_reads(node, sm)

    def _applied(self, op: OpRecord, node: NodeId, sm: KvMachine) -> None:
        """Our entry was applied here: answer from its result, as the real server does."""
        if op.status != PENDING:
            return
        result = sm.last_result
        c = next(c for c in self._clients if c.current == op.op_id)
        match result:
            case SessionResult(session_id=sid):
                c.session = sid
            case SessionError() | NoSpace():
                # Not applied by this attempt; an earlier one may have been.
                self._complete(op.op_id, UNKNOWN if op.attempts > 1 else FAIL, guess=node)
                return
            case TxnResult(succeeded=False, results=[RangeResult(kvs=kvs), *_]):
                # A refused CAS: it had no effect and it read the key (recorded as that get).
                got = kvs[0].value if kvs else None
                op.kind, op.value = "get", got if isinstance(got, str) else None
        revision = getattr(result, "revision", 0)
        if isinstance(revision, int):
            self._max_revision = max(self._max_revision, revision)
        if op.kind in ("put", "cas") or op.kind == "get":
            c.seen[op.key] = op.value
        elif op.kind == "delete":
            c.seen[op.key] = None
        self._complete(op.op_id, OK, guess=node)

    def on_snapshot(self, node: NodeId, sm: KvMachine) -> None:
        """Writes proposed here at indexes a snapshot skipped: outcome unknown to this server."""
        writes = self._writes.get(node)
        if writes:
            for index in sorted(writes):
                if index <= sm.applied:
                    op = self.ops[writes.pop(index)[1]]
                    if not self._retry(op):
                        self._complete(op.op_id, UNKNOWN, guess=None)
        self._serve_reads(node, sm)

    def on_read_states(
        self, node: NodeId, states: tuple[ReadState, ...], sm: KvMachine
    ) -> list[str]:
        """Queue the reads until applied; returns reads whose index was stale."""
        ctxs = self._read_ctx.get(node, {})
        stale: list[str] = []
        for rs in states:
            op_id = ctxs.pop(rs.context, None)
            if op_id is not None:
                problem = self._got_read_index(node, op_id, int(rs.index))
                if problem:
                    stale.append(problem)
        self._serve_reads(node, sm)
        return stale

    def _got_read_index(self, node: NodeId, op_id: int, index: int) -> str:
        """Queue a read until `index` is applied; a complaint if the index was stale."""
        self._read_wait.setdefault(node, []).append((index, op_id))
        floor = self._read_floor.pop(op_id, 0)
        if index >= floor:
            return ""
        op = self.ops[op_id]
        return (
            f"{node} gave read index {index} to get({op.key}) #{op_id}, but "
            f"index {floor} was already committed when the read began"
        )

    def _serve_reads(self, node: NodeId, sm: KvMachine) -> None:
        waits = self._read_wait.get(node)
        if not waits:
            return
        still: list[tuple[int, int]] = []
        for index, op_id in waits:
            if index > sm.applied:
                still.append((index, op_id))
                continue
            op = self.ops[op_id]
            if op.status == PENDING:
                op.value = sm.value(op.key)
                self._clients_seen(op)
                self._complete(op_id, OK, guess=node)
        self._read_wait[node] = still

    def _clients_seen(self, op: OpRecord) -> None:
        for c in self._clients:
            if c.current == op.op_id:
                c.seen[op.key] = op.value

    def on_crash(self, node: NodeId) -> None:
        """Everything in flight at a crashed server: writes unknown, reads failed."""
        for _, (_, op_id) in sorted(self._writes.pop(node, {}).items()):
            if not self._retry(self.ops[op_id]):
                self._complete(op_id, UNKNOWN, guess=None)
        for op_id in sorted(self._read_ctx.pop(node, {}).values()):
            self._complete(op_id, FAIL, guess=None)
        for _, op_id in self._read_wait.pop(node, []):
            self._complete(op_id, FAIL, guess=None)

    def _complete(self, op_id: int, status: str, guess: NodeId | None) -> None:
        op = self.ops[op_id]
        if op.status != PENDING:
            return
        op.status = status
        op.complete = self.sched.now
        c = next(c for c in self._clients if c.current == op_id)
        c.current = None
        c.guess = guess
        if status == UNKNOWN:
            c.process = self._next_process  # the old process may still be "running" the op
            self._next_process += 1
        if self.running:
            # Back off after a failure, as real clients do: a leaderless cluster should not
            # turn the event budget into a stream of refusals.
            mean = self.opt.think if status == OK else self.opt.backoff
            self.sched.push(int(self.rng.expovariate(1.0 / mean)), ClientInvoke(c.cid))
