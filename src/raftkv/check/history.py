"""Recorded client histories of a key-value register store.

Rules:
- Pure: stdlib + msgspec, no I/O, no clock. Times are whatever one clock the caller uses
  (simulator ticks, `time.monotonic()`); they are passed in, never read here.
- An `Op` is an immutable record; the `History` builder replaces it when it completes.
- Outcomes: OK (completed, result known), FAIL (definitely did not take effect), UNKNOWN
  (timed out / connection lost: a write may have taken effect at any time after `invoke`, or
  never; `complete` is None). An op never completed is UNKNOWN too.
- JSON lines (one `Op` per line) is the on-disk form; this module only turns ops into bytes and
  back, the caller owns the file.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator

import msgspec

ClientId = str | int


class OpKind(enum.Enum):
    PUT = "put"
    DELETE = "delete"
    GET = "get"
    CAS = "cas"  # put `value` if the register holds `expect` (None: absent), else no effect


class Outcome(enum.Enum):
    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"


class Op(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One client operation on one key.

    `value`: for PUT/CAS the value written; for an OK GET the value observed (None = absent).
    `existed`: for an OK DELETE, whether the server said the key existed (None = not said).
    `expect`: for CAS, the value the register must hold for the write to happen (None =
    absent). An OK CAS is one that succeeded; a CAS that was refused is recorded as the GET
    of what the server said the key held (or FAIL if it did not say).
    `revision`: what the server said: a write's revision, a get's mod_revision (None = not
    said or absent); checked by `raftkv.check.revisions`.
    """

    id: int
    client: ClientId
    kind: OpKind
    key: str
    invoke: float
    value: str | None = None
    complete: float | None = None  # None unless OK or FAIL-with-time
    outcome: Outcome = Outcome.UNKNOWN
    existed: bool | None = None
    expect: str | None = None
    revision: int | None = None

    def __str__(self) -> str:
        match self.kind:
            case OpKind.PUT:
                call = f"put({self.key!r}, {self.value!r})"
            case OpKind.DELETE:
                call = f"delete({self.key!r})"
                if self.existed is not None:
                    call += f" -> existed={self.existed}"
            case OpKind.CAS:
                call = f"cas({self.key!r}, {self.expect!r} -> {self.value!r})"
            case OpKind.GET:
                call = f"get({self.key!r})"
                if self.outcome is Outcome.OK:
                    call += f" -> {self.value!r}"
        end = "…" if self.complete is None else f"{self.complete:g}"
        return f"#{self.id} {self.client}: {call} [{self.invoke:g}, {end}] {self.outcome.value}"


class History:
    """Builds a history as clients call and hear back: `invoke` first, then one completion."""

    def __init__(self, ops: Iterable[Op] = ()) -> None:
        self._ops: dict[int, Op] = {}  # insertion order = id order for builder-made ops
        self._done: set[int] = set()  # ids that already got ok/fail/unknown
        for op in ops:
            self._ops[op.id] = op
            self._done.add(op.id)
        self._next_id = max(self._ops, default=-1) + 1  # > every id recorded so far

    def invoke(
        self, client: ClientId, kind: OpKind, key: str, value: str | None = None, *, at: float
    ) -> int:
        """Record a call; returns the op id to complete later."""
        if (kind in (OpKind.PUT, OpKind.CAS)) != (value is not None):
            raise ValueError("a put carries a value (so does a cas); get and delete do not")
        op_id = self._next_id
        self._next_id += 1
        self._ops[op_id] = Op(id=op_id, client=client, kind=kind, key=key, value=value, invoke=at)
        return op_id

    def put(self, client: ClientId, key: str, value: str, *, at: float) -> int:
        return self.invoke(client, OpKind.PUT, key, value, at=at)

    def cas(self, client: ClientId, key: str, expect: str | None, value: str, *, at: float) -> int:
        op_id = self.invoke(client, OpKind.CAS, key, value, at=at)
        self._ops[op_id] = msgspec.structs.replace(self._ops[op_id], expect=expect)
        return op_id

    def get(self, client: ClientId, key: str, *, at: float) -> int:
        return self.invoke(client, OpKind.GET, key, at=at)

    def delete(self, client: ClientId, key: str, *, at: float) -> int:
        return self.invoke(client, OpKind.DELETE, key, at=at)

    def ok(
        self,
        op_id: int,
        *,
        at: float,
        value: str | None = None,
        existed: bool | None = None,
        revision: int | None = None,
    ) -> Op:
        """Completed with a known result: `value` observed by a get, `existed` for a delete,
        `revision` as the server reported it."""
        op = self._pending(op_id)
        if value is not None and op.kind is not OpKind.GET:
            raise ValueError("only a get observes a value")
        if existed is not None and op.kind is not OpKind.DELETE:
            raise ValueError("only a delete reports existed")
        changes: dict[str, object] = {"value": value} if op.kind is OpKind.GET else {}
        if revision is not None:
            changes["revision"] = revision
        return self._finish(op, at, Outcome.OK, existed=existed, **changes)

    def fail(self, op_id: int, *, at: float | None = None) -> Op:
        """Definitely did not take effect (refused before it was proposed)."""
        return self._finish(self._pending(op_id), at, Outcome.FAIL)

    def unknown(self, op_id: int) -> Op:
        """Outcome lost: may or may not have taken effect, at any time after invoke."""
        return self._finish(self._pending(op_id), None, Outcome.UNKNOWN)

    def ops(self) -> tuple[Op, ...]:
        return tuple(self._ops.values())

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops())

    def __len__(self) -> int:
        return len(self._ops)

    def _pending(self, op_id: int) -> Op:
        if op_id not in self._ops:
            raise KeyError(f"no op #{op_id}")
        if op_id in self._done:
            raise ValueError(f"op #{op_id} already completed")
        return self._ops[op_id]

    def _finish(self, op: Op, at: float | None, outcome: Outcome, **changes: object) -> Op:
        if at is not None and at < op.invoke:
            raise ValueError(f"op #{op.id} completes at {at} before its invoke {op.invoke}")
        done = msgspec.structs.replace(op, complete=at, outcome=outcome, **changes)
        self._ops[op.id] = done
        self._done.add(op.id)
        return done


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Op)


def dumps_jsonl(ops: Iterable[Op]) -> bytes:
    """One JSON object per line, each line ending in a newline."""
    return b"".join(_encoder.encode(op) + b"\n" for op in ops)


def loads_jsonl(data: bytes | str) -> list[Op]:
    """Inverse of `dumps_jsonl`; blank lines are skipped."""
    raw = data.encode() if isinstance(data, str) else data
    return [_decoder.decode(line) for line in raw.splitlines() if line.strip()]
