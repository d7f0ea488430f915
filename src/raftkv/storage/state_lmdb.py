"""The KV state machine of one node in LMDB (the default backend).

Rules:
- One LMDB environment per node directory, two named databases: `kv` (the data) and `meta`
  (`applied` = (index, term) of the last applied entry, `conf` = the ConfState in force,
  `cluster` = the membership record, opaque bytes owned by the runtime; it travels in snapshots).
  `apply()` writes the batch's effects and the new applied (index, term) in ONE write
  transaction, so the state never disagrees with its own applied index.
- No fsync per apply (`sync=False`, `metasync=False`): the Raft log is the durable record, and a
  restart re-applies the entries after whatever applied index LMDB kept (a commit is already in
  the OS page cache, so only an OS crash or power loss rolls it back). The caller MUST call
  `sync()` before compacting the log past `applied_index`. `install_snapshot` syncs itself.
- Key layout, history, sessions and the layout migration: `raftkv.storage.mvcc_lmdb` (this
  module keeps the environment, the applied index and conf, and snapshot mechanics).
- Threads: `apply`/`set_conf` run on the loop thread; `build_snapshot` uses one read
  transaction and may run on a worker thread meanwhile; `install_snapshot` (worker thread) holds
  the write lock for the whole install, so the caller must not apply until it returns. A write
  transaction starts and ends on the same thread, as LMDB requires.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import lmdb
import msgspec

from raftkv.kv.commands import KeyValue
from raftkv.kv.mvcc import MVCCStore
from raftkv.raft.types import ConfState, Entry, Index, Term
from raftkv.storage.errors import CorruptSnapshotError, StorageError
from raftkv.storage.mvcc_image import load_image
from raftkv.storage.mvcc_lmdb import Dbs, LmdbStore, clear, lmdb_image, open_dbs
from raftkv.storage.snapshot_file import (
    SnapshotHeader,
    SnapshotInfo,
    SnapshotReader,
    write_snapshot_file,
)
from raftkv.storage.state import (
    ApplyResult,
    StateMachine,
    apply_entry,
    display_value,
    first_new,
)

T = TypeVar("T")

DEFAULT_MAP_SIZE = 16 << 30  # address space, not disk: the file grows with the data

_APPLIED = struct.Struct("<QQ")  # applied index, applied term
_APPLIED_KEY = b"applied"
_CONF_KEY = b"conf"
_CLUSTER_KEY = b"cluster"

_conf_encoder = msgspec.msgpack.Encoder()
_conf_decoder = msgspec.msgpack.Decoder(ConfState)


class LmdbState:
    """The node's KV state machine in an LMDB environment. Create with `LmdbState.open(dir)`."""

    def __init__(self, path: Path, env: lmdb.Environment, dbs: Dbs):
        self._path = path
        self._env = env
        self._dbs = dbs
        self._meta = dbs.meta
        # Cached from `meta`, updated after each commit (read by the loop thread only):
        self._applied_index = Index(0)
        self._applied_term = Term(0)
        self._conf = ConfState()
        self._cluster = b""

    @classmethod
    def open(cls, path: Path, map_size: int = DEFAULT_MAP_SIZE) -> LmdbState:
        """Open or create the environment in directory `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        env = lmdb.open(
            str(path), map_size=map_size, max_dbs=5, subdir=True, sync=False, metasync=False
        )
        try:
            meta = env.open_db(b"meta")
            state = cls(path, env, open_dbs(env, meta))
            with env.begin(write=True) as txn:
                store = LmdbStore(txn, state._dbs)
                store.ensure_layout()
                store.ensure_space()  # kv/quota.py: recounted if missing or stale
                state._read_meta(txn)
        except BaseException:
            env.close()
            raise
        return state

    def _read_meta(self, txn: lmdb.Transaction[bytes]) -> None:
        applied = txn.get(_APPLIED_KEY, db=self._meta)
        conf = txn.get(_CONF_KEY, db=self._meta)
        self._cluster = bytes(txn.get(_CLUSTER_KEY, b"", db=self._meta))
        try:
            index, term = _APPLIED.unpack(applied) if applied is not None else (0, 0)
            self._conf = _conf_decoder.decode(conf) if conf is not None else ConfState()
        except (struct.error, msgspec.DecodeError) as exc:
            raise StorageError(f"state {self._path}: unreadable meta record: {exc}") from exc
        self._applied_index = Index(index)
        self._applied_term = Term(term)

    # -- loop thread --------------------------------------------------------------------------
    @property
    def applied_index(self) -> Index:
        return self._applied_index

    @property
    def applied_term(self) -> Term:
        return self._applied_term

    @property
    def conf(self) -> ConfState:
        return self._conf

    @property
    def cluster(self) -> bytes:
        """The membership record stored with `conf` (empty if none was ever stored)."""
        return self._cluster

    def apply(
        self,
        entries: Sequence[Entry],
        conf: ConfState | None = None,
        cluster: bytes | None = None,
    ) -> list[ApplyResult]:
        """Apply committed `entries` (and store `conf` / `cluster`, if given) in one write
        transaction.

        Returns one result per entry of `entries`, None for no-ops, conf changes and entries
        at or below the applied index (skipped)."""
        start = first_new(self._applied_index, entries, f"state {self._path}")
        results: list[ApplyResult] = [None] * len(entries)
        if start == len(entries) and conf is None and cluster is None:
            return results
        with self._env.begin(write=True) as txn:  # commits on success, aborts on an exception
            store = LmdbStore(txn, self._dbs)
            for pos in range(start, len(entries)):
                results[pos] = apply_entry(store, entries[pos])
            store.compact_step()
            if start < len(entries):
                last = entries[-1]
                txn.put(_APPLIED_KEY, _APPLIED.pack(last.index, last.term), db=self._meta)
            if conf is not None:
                txn.put(_CONF_KEY, _conf_encoder.encode(conf), db=self._meta)
            if cluster is not None:
                txn.put(_CLUSTER_KEY, cluster, db=self._meta)
        if start < len(entries):
            self._applied_index = entries[-1].index
            self._applied_term = entries[-1].term
        if conf is not None:
            self._conf = conf
        if cluster is not None:
            self._cluster = cluster
        return results

    def set_conf(self, conf: ConfState, cluster: bytes | None = None) -> None:
        """Store the configuration in force (e.g. at bootstrap, or after a conf change).

        Prefer `apply(entries, conf=...)` for a batch holding a conf change: a snapshot taken
        between that apply and a separate `set_conf` would pair the new index with the old conf.
        """
        self.apply((), conf, cluster)

    def sync(self) -> None:
        """Flush every committed apply to disk (call before compacting the Raft log)."""
        self._env.sync(True)

    # -- any thread ---------------------------------------------------------------------------
    def read(self, fn: Callable[[MVCCStore], T]) -> T:
        """`fn` over one read transaction: one consistent instant of the state."""
        with self._env.begin() as txn:
            return fn(LmdbStore(txn, self._dbs))

    def get(self, key: str) -> KeyValue | None:
        with self._env.begin() as txn:
            return LmdbStore(txn, self._dbs).get(key)

    def items(
        self, prefix: str = "", limit: int | None = None, after: str | None = None
    ) -> Iterator[tuple[str, str]]:
        """(key, value as text) pairs whose key starts with `prefix`, after key `after`
        (exclusive), at most `limit`, in key order; read in one transaction, then yielded."""

        def page(store: MVCCStore) -> list[tuple[str, str]]:
            out: list[tuple[str, str]] = []
            for kv in store.range(prefix, None, prefix, None, after):
                if limit is not None and len(out) >= limit:
                    break
                out.append((kv.key, display_value(kv)))
            return out

        return iter(self.read(page))

    def build_snapshot(self, dest: Path) -> SnapshotInfo:
        """Write a snapshot of one consistent instant to `dest` (safe on a worker thread).
        The node's automatic snapshots are built by a separate process instead
        (`raftkv.storage.snapshot_builder`), from the same function over the same data."""
        with self._env.begin() as txn:  # one read txn: data, index, term and conf agree
            return snapshot_of(txn, self._dbs, dest)

    def install_snapshot(self, src: Path) -> SnapshotInfo:
        """Verify `src` while replacing the whole state with it; durable on return.

        A corrupt file raises `CorruptSnapshotError` and leaves the state unchanged."""
        src = Path(src)
        with open(src, "rb") as f:
            reader = SnapshotReader(f, str(src))
            h = reader.header
            with self._env.begin(write=True) as txn:  # aborted if verification fails
                clear(txn, self._dbs)
                try:
                    load_image(reader.records(), LmdbStore(txn, self._dbs), str(src))
                except lmdb.BadValsizeError as exc:
                    raise CorruptSnapshotError(f"snapshot {src}: bad record: {exc}") from exc
                txn.put(_APPLIED_KEY, _APPLIED.pack(h.index, h.term), db=self._meta)
                txn.put(_CONF_KEY, _conf_encoder.encode(h.conf), db=self._meta)
                if h.cluster:
                    txn.put(_CLUSTER_KEY, h.cluster, db=self._meta)
            size = f.tell()
        # The caller records this snapshot in the Raft log and drops the entries it covers;
        # from then on nothing can rebuild this state but LMDB itself, so make it durable now.
        self._env.sync(True)
        self._applied_index, self._applied_term, self._conf = h.index, h.term, h.conf
        if h.cluster:
            self._cluster = h.cluster
        return SnapshotInfo(h.index, h.term, h.conf, src, size)

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        self._env.close()


def snapshot_of(
    txn: lmdb.Transaction[bytes],
    dbs: Dbs,
    dest: Path,
    records: Callable[[Iterator[tuple[bytes, bytes]]], Iterator[tuple[bytes, bytes]]] | None = None,
) -> SnapshotInfo:
    """Write the state as of read transaction `txn` to `dest` (atomically: snapshot_file.py).

    Everything comes from `txn`: the applied (index, term), conf and membership record in the
    header and every record of the image, so the file is one consistent instant. `records`
    may wrap the record stream (the builder's test hook)."""
    applied = txn.get(_APPLIED_KEY, db=dbs.meta)
    conf = txn.get(_CONF_KEY, db=dbs.meta)
    cluster = txn.get(_CLUSTER_KEY, b"", db=dbs.meta)
    index, term = _APPLIED.unpack(applied) if applied is not None else (0, 0)
    header = SnapshotHeader(
        Index(index),
        Term(term),
        _conf_decoder.decode(conf) if conf is not None else ConfState(),
        bytes(cluster),
    )
    image = lmdb_image(txn, dbs)
    return write_snapshot_file(dest, header, image if records is None else records(image))


if TYPE_CHECKING:  # mypy proves the backend fulfils the contract
    _contract: type[StateMachine] = LmdbState
