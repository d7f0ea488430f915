"""The simulated nodes' state machine: a dict of key -> value, plus a digest chain.

Rules:
- Commands are msgspec Structs (tagged union); an empty NORMAL entry is the leader's no-op and
  conf-change entries only advance the applied index (the core applies them itself).
- `digest` chains every applied entry: digest(i) = blake2b(digest(i-1), index, term, kind,
  data). Two nodes with the same digest at the same index applied the same sequence, which is how
  the invariants compare nodes across snapshots without keeping whole histories.
- A snapshot image carries the dict, the applied index and the digest, so a node restored from
  it continues the same chain.
"""

from __future__ import annotations

import hashlib

import msgspec

from raftkv.raft.types import Entry, EntryKind, Index, Snapshot


class Put(msgspec.Struct, frozen=True, array_like=True, tag="put"):
    key: str
    value: str


class Delete(msgspec.Struct, frozen=True, array_like=True, tag="del"):
    key: str


Command = Put | Delete


class Image(msgspec.Struct, frozen=True, array_like=True):
    applied: int
    digest: bytes
    kv: dict[str, str]


_cmd_encoder = msgspec.msgpack.Encoder()
_cmd_decoder = msgspec.msgpack.Decoder(Command)
_image_decoder = msgspec.msgpack.Decoder(Image)

GENESIS = b"\x00" * 16


def encode_command(cmd: Command) -> bytes:
    return _cmd_encoder.encode(cmd)


def decode_command(data: bytes) -> Command:
    cmd: Command = _cmd_decoder.decode(data)
    return cmd


def chain(prev: bytes, entry: Entry) -> bytes:
    h = hashlib.blake2b(prev, digest_size=16)
    h.update(b"%d:%d:%d:" % (entry.index, entry.term, entry.kind))
    h.update(entry.data)
    return h.digest()


class KvMachine:
    def __init__(self) -> None:
        self.kv: dict[str, str] = {}
        self.applied = Index(0)  # last applied index; entries apply strictly in order
        self.digest = GENESIS  # digest chain value at `applied`

    def apply(self, entry: Entry) -> None:
        if entry.kind == EntryKind.NORMAL and entry.data:
            match decode_command(entry.data):
                case Put(key=key, value=value):
                    self.kv[key] = value
                case Delete(key=key):
                    self.kv.pop(key, None)
        self.applied = entry.index
        self.digest = chain(self.digest, entry)

    def image(self) -> bytes:
        return _cmd_encoder.encode(Image(self.applied, self.digest, dict(sorted(self.kv.items()))))

    def restore(self, snap: Snapshot) -> None:
        """Replace the state by a snapshot's image (index 0 is the empty bootstrap state)."""
        if snap.meta.index == 0:
            self.kv, self.applied, self.digest = {}, Index(0), GENESIS
            return
        img = _image_decoder.decode(snap.data)
        if img.applied != snap.meta.index:
            raise ValueError(f"image at {img.applied} in a snapshot at {snap.meta.index}")
        self.kv = dict(img.kv)
        self.applied = snap.meta.index
        self.digest = img.digest
