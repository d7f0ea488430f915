"""The KV state machine's apply logic, pure, over the MVCC store port (`raftkv.kv.mvcc`).

Rules:
- `apply_command(store, cmd, revision)` is deterministic: the same commands at the same
  revisions applied to the same state give the same state and results on every node. No clock,
  no randomness, no I/O beyond the port. `revision` is the Raft index of the entry (see mvcc).
- A command that writes sets the store's revision to `revision`; one that writes nothing (a
  delete of an absent key, a transaction whose branch only reads) leaves it unchanged.
- Every write of one command is one revision; `sub` numbers the writes inside it.
- Transactions: compares read the state before the transaction; the branch's ops run in order
  and a `get` sees the branch's earlier writes. A value compare on an absent key is false; a
  value compare between text and bytes is false for ==, <, > and true for !=.
- Sessions (`raftkv.kv.sessions`) wrap a write: the wrapped write runs through `apply_write`.
- Space (`raftkv.kv.quota`): every write is accounted in the same step; while a `no_space`
  alarm is raised, a write that would grow the live data is refused (`NoSpace`) before it
  changes anything.
"""

from __future__ import annotations

from raftkv.kv.auth import (
    RoleDelete,
    RolePermission,
    RolePut,
    SigningKey,
    UserDelete,
    UserPut,
    UserRole,
    apply_auth,
)
from raftkv.kv.commands import (
    Command,
    Compact,
    CompactResult,
    Compare,
    CompareOp,
    Delete,
    DeleteOp,
    DeleteRange,
    DeleteRangeResult,
    DeleteResult,
    GetOp,
    KeyValue,
    OpenSession,
    OpResult,
    Put,
    PutOp,
    PutResult,
    RangeResult,
    Result,
    SessionRequest,
    Target,
    Txn,
    TxnOp,
    TxnResult,
    Value,
)
from raftkv.kv.mvcc import MVCCStore
from raftkv.kv.quota import (
    Alarm,
    SetQuota,
    SpaceRecord,
    account,
    apply_space,
    evaluate,
    record_bytes,
    refused,
    space,
)
from raftkv.kv.sessions import apply_session_request, open_session


class _Writes:
    """The writes of one command: one revision, numbered by `sub`."""

    __slots__ = ("live", "revision", "store", "sub", "written")

    def __init__(self, store: MVCCStore, revision: int) -> None:
        self.store = store
        self.revision = revision
        self.sub = 0  # writes so far; > 0 means the command wrote
        self.live = 0  # change of the live data's accounted size (kv/quota.py)
        self.written = 0  # accounted size of the history events added

    def put(self, key: str, value: Value) -> None:
        prev = self.store.get(key)
        rev = self.revision
        size = record_bytes(key, value)
        if prev is None:
            kv = KeyValue(key, value, rev, rev, 1)
            self.live += size
        else:
            kv = KeyValue(key, value, prev.create_revision, rev, prev.version + 1)
            self.live += size - record_bytes(key, prev.value)
        self.store.put(kv, self.sub)
        self.sub += 1
        self.written += size

    def delete(self, key: str) -> bool:
        prev = self.store.get(key)
        if prev is None:
            return False
        self.store.delete(key, self.revision, self.sub)
        self.sub += 1
        self.live -= record_bytes(key, prev.value)
        self.written += record_bytes(key, None)
        return True

    def delete_prefix(self, prefix: str) -> int:
        keys = [kv.key for kv in self.store.range(prefix, None, prefix, None, None)]
        for key in keys:
            self.delete(key)
        return len(keys)

    def finish(self, rec: SpaceRecord) -> int:
        """The store's revision after the command (`rec`: the space record it found)."""
        if self.sub:
            self.store.set_revision(self.revision)
            account(self.store, self.live, self.written, self.revision, rec)
        return self.store.revision()


def apply_command(store: MVCCStore, cmd: Command, revision: int) -> Result:
    """Apply one decoded command, carried by the entry at index `revision`."""
    match cmd:
        case SessionRequest():
            return apply_session_request(store, cmd, revision, apply_write)
        case OpenSession():
            return open_session(store, cmd, revision)
        case Compact(revision=rev):
            if rev <= store.compact_revision() or rev > store.revision():
                return CompactResult(False, store.compact_revision(), store.revision())
            store.compact(rev)
            evaluate(store)  # compaction frees history: the quota alarm may clear
            return CompactResult(True, rev, store.revision())
        case Put() | Delete() | Txn() | DeleteRange():
            return apply_write(store, cmd, revision)
        case UserPut() | UserDelete() | UserRole() | RolePut() | RoleDelete() | RolePermission():
            return apply_auth(_AuthRecords(store), cmd)
        case SigningKey():
            return apply_auth(_AuthRecords(store), cmd)
        case Alarm() | SetQuota():
            return apply_space(store, cmd)
    # Unreachable while Command is a closed union; a new command must get a case above.
    raise TypeError(f"unknown command type {type(cmd).__name__}")


class _AuthRecords:
    """`kv.auth.AuthBatch` over the store's auth records (outside the key space)."""

    __slots__ = ("_store",)

    def __init__(self, store: MVCCStore) -> None:
        self._store = store

    def get(self, key: str) -> str | None:
        return self._store.auth_get(key)

    def put(self, key: str, value: str) -> None:
        self._store.auth_put(key, value)

    def delete(self, key: str) -> bool:
        existed = self._store.auth_get(key) is not None
        self._store.auth_delete(key)
        return existed


def apply_write(store: MVCCStore, cmd: Put | Delete | Txn | DeleteRange, revision: int) -> Result:
    """Apply a data command (bare or inside a session request)."""
    rec = space(store)
    if rec.raised and _grows(store, cmd):
        return refused(store)
    w = _Writes(store, revision)
    match cmd:
        case Put(key=key, value=value):
            w.put(key, value)
            return PutResult(w.finish(rec))
        case Delete(key=key):
            existed = w.delete(key)
            return DeleteResult(existed, w.finish(rec))
        case DeleteRange(prefix=prefix):
            deleted = w.delete_prefix(prefix)
            return DeleteRangeResult(deleted, w.finish(rec))
        case Txn(compare=compare, success=success, failure=failure):
            ok = all(_holds(store, c) for c in compare)
            results = [_run_op(w, op) for op in (success if ok else failure)]
            return TxnResult(ok, w.finish(rec), results)
    raise TypeError(f"unknown write type {type(cmd).__name__}")


def _grows(store: MVCCStore, cmd: Put | Delete | Txn | DeleteRange) -> bool:
    """Would `cmd` make the live data larger? (Only asked while an alarm is raised.)"""
    match cmd:
        case Put(key=key, value=value):
            prev = store.get(key)
            old = 0 if prev is None else record_bytes(key, prev.value)
            return record_bytes(key, value) > old
        case Txn(compare=compare, success=success, failure=failure):
            ops = success if all(_holds(store, c) for c in compare) else failure
            return _ops_delta(store, ops) > 0
    return False  # deletes only shrink it


def _ops_delta(store: MVCCStore, ops: list[TxnOp]) -> int:
    """The live-size change of a transaction branch, its ops seeing the earlier ones."""
    sizes: dict[str, int] = {}  # key -> accounted size after the ops so far (0: absent)

    def size(key: str) -> int:
        if key not in sizes:
            kv = store.get(key)
            sizes[key] = 0 if kv is None else record_bytes(key, kv.value)
        return sizes[key]

    delta = 0
    for op in ops:
        match op:
            case PutOp(key=key, value=value):
                new = record_bytes(key, value)
                delta += new - size(key)
                sizes[key] = new
            case DeleteOp(key=key, prefix=True):
                keys = {kv.key for kv in store.range(key, None, key, None, None)}
                for k in sorted(keys | {k for k in sizes if k.startswith(key)}):
                    delta -= size(k)
                    sizes[k] = 0
            case DeleteOp(key=key):
                delta -= size(key)
                sizes[key] = 0
    return delta


def _run_op(w: _Writes, op: TxnOp) -> OpResult:
    match op:
        case GetOp(key=key, prefix=True):
            return RangeResult(list(w.store.range(key, None, key, None, None)))
        case GetOp(key=key):
            kv = w.store.get(key)
            return RangeResult([] if kv is None else [kv])
        case PutOp(key=key, value=value):
            w.put(key, value)
            return PutResult(w.revision)
        case DeleteOp(key=key, prefix=True):
            return DeleteRangeResult(w.delete_prefix(key), w.revision)
        case DeleteOp(key=key):
            return DeleteRangeResult(int(w.delete(key)), w.revision)
    raise TypeError(f"unknown txn op {type(op).__name__}")


def compare_target(kv: KeyValue | None, target: Target) -> int | Value | None:
    """What `target` reads from `kv` (None: the value of an absent key)."""
    match target:
        case Target.VALUE:
            return None if kv is None else kv.value
        case Target.VERSION:
            return 0 if kv is None else kv.version
        case Target.MOD_REVISION:
            return 0 if kv is None else kv.mod_revision
        case Target.CREATE_REVISION:
            return 0 if kv is None else kv.create_revision
    raise ValueError(f"unknown compare target {target!r}")


def _holds(store: MVCCStore, c: Compare) -> bool:
    actual = compare_target(store.get(c.key), c.target)
    if actual is None:
        return False
    want = c.value
    if type(actual) is not type(want) and not (isinstance(actual, int) and isinstance(want, int)):
        return c.op is CompareOp.NE
    match c.op:
        case CompareOp.EQ:
            return actual == want
        case CompareOp.NE:
            return actual != want
        case CompareOp.LT:
            return actual < want  # type: ignore[operator]  # same type, checked above
        case CompareOp.GT:
            return actual > want  # type: ignore[operator]
    return False
