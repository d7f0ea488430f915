"""The simulated nodes' state machine: the real KV apply logic (`raftkv.kv`) plus a digest chain.

Rules:
- Commands are the real ones (`raftkv.kv.commands`, encoded by `raftkv.codec.commands`) and
  are applied by the real pure logic (`raftkv.kv.machine.apply_command`) over `DictState`, at
  revision = the entry's index: revisions, transactions and client sessions behave exactly as
  on a real node. An empty NORMAL entry is the leader's no-op and conf-change entries only
  advance the applied index (the core applies them itself).
- `last_result` is the result of the last applied command (None after a no-op): the simulated
  server answers its client from it, as the real server answers from the apply result.
- `digest` chains every applied entry: digest(i) = blake2b(digest(i-1), index, term, kind,
  data). Two nodes with the same digest at the same index applied the same sequence, which is how
  the invariants compare nodes across snapshots without keeping whole histories.
- A snapshot image carries the state's snapshot records (`raftkv.storage.mvcc_image`, the real
  format: history and sessions included), the applied index and the digest, so a node restored
  from it continues the same chain.
"""

from __future__ import annotations

import hashlib

import msgspec

from raftkv.codec.commands import decode_command, encode_command
from raftkv.kv.commands import Delete, Put, Result
from raftkv.kv.machine import apply_command
from raftkv.kv.mvcc import DictState
from raftkv.kv.quota import SpaceRecord, space, usage
from raftkv.raft.types import Entry, EntryKind, Index, Snapshot
from raftkv.storage.mvcc_image import dict_image, load_image

__all__ = ["GENESIS", "Delete", "KvMachine", "Put", "chain", "encode_command"]


class Image(msgspec.Struct, frozen=True, array_like=True):
    applied: int
    digest: bytes
    records: list[tuple[bytes, bytes]]


_image_encoder = msgspec.msgpack.Encoder()
_image_decoder = msgspec.msgpack.Decoder(Image)

GENESIS = b"\x00" * 16


def chain(prev: bytes, entry: Entry) -> bytes:
    h = hashlib.blake2b(prev, digest_size=16)
    h.update(b"%d:%d:%d:" % (entry.index, entry.term, entry.kind))
    h.update(entry.data)
    return h.digest()


class KvMachine:
    def __init__(self) -> None:
        self.state = DictState()
        self.applied = Index(0)  # last applied index; entries apply strictly in order
        self.digest = GENESIS  # digest chain value at `applied`
        self.last_result: Result | None = None

    def apply(self, entry: Entry) -> None:
        self.last_result = None
        if entry.kind == EntryKind.NORMAL and entry.data:
            cmd = decode_command(entry.data)
            self.last_result = apply_command(self.state, cmd, int(entry.index))
        self.applied = entry.index
        self.digest = chain(self.digest, entry)

    def space_figures(self) -> tuple[int, SpaceRecord]:
        """Usage and the quota/alarm record (kv/quota.py): equal on every node at an index."""
        return usage(self.state), space(self.state)

    def value(self, key: str) -> str | None:
        kv = self.state.get(key)
        return None if kv is None or not isinstance(kv.value, str) else kv.value

    @property
    def kv(self) -> dict[str, str | bytes]:
        """The live keys and their values (a copy)."""
        return {key: kv.value for key, kv in self.state.items()}

    def image(self) -> bytes:
        return _image_encoder.encode(Image(self.applied, self.digest, list(dict_image(self.state))))

    def restore(self, snap: Snapshot) -> None:
        """Replace the state by a snapshot's image (index 0 is the empty bootstrap state)."""
        self.last_result = None
        if snap.meta.index == 0:
            self.state, self.applied, self.digest = DictState(), Index(0), GENESIS
            return
        img = _image_decoder.decode(snap.data)
        if img.applied != snap.meta.index:
            raise ValueError(f"image at {img.applied} in a snapshot at {snap.meta.index}")
        state = DictState()
        load_image(img.records, state, f"sim snapshot at {img.applied}")
        self.state = state
        self.applied = snap.meta.index
        self.digest = img.digest

    def duplicate_writes(self) -> list[str]:
        """Values written more than once (the workload writes each value once): a retried
        session write applied twice shows up here."""
        seen: dict[tuple[str, str | bytes], int] = {}
        out: list[str] = []
        for rev, _, (key, kv) in self.state.events():
            if kv is None:
                continue
            first = seen.setdefault((key, kv.value), rev)
            if first != rev:
                out.append(f"{key}={kv.value!r} written at revisions {first} and {rev}")
        return out
