"""The registry of replicated command kinds: which tag means which command, since when.

Rules:
- A command kind is a frozen msgspec Struct subclassing `CommandBase`, with an integer msgspec
  `tag=` (the only place its tag is written) and the `@command_kind(name, since=N)` decorator,
  which records it here. The registry refuses, at import time, a tag or name used twice, a
  class without an int tag, a tag outside 1..MAX_TAG, and `since` above `COMMAND_SET_VERSION`.
- Tags and names are fixed forever: they are inside committed log entries on disk. A tag is
  never reused or renumbered, even after its kind is retired; `tests/unit/kv/command_kinds.golden`
  pins every (tag, name, since) ever assigned and may only grow.
- `since` is the command-set version that introduced the kind. The leader proposes a kind only
  when every voter understands that command set (`raftkv.runtime.features`), so an older node
  in a rolling upgrade never receives an entry it cannot apply.
- Pure: no I/O; importing a module that defines kinds is what registers them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, TypeVar

import msgspec

# The highest command-set version this code understands (and advertises to its peers).
#   1: round 1 (put, delete). A node that advertises nothing (older code) is at 1.
#   2: round 2 (in development): every kind added this round uses since=2.
# A kind added after a release that shipped version N needs N + 1 here and since=N + 1.
COMMAND_SET_VERSION: Final = 2
BASE_COMMAND_SET: Final = 1  # what a peer that advertises no version understands

# Tags stay below 128 so that the tag is one msgpack byte; 127 kinds are plenty.
MAX_TAG: Final = 127


class CommandBase(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Shared options of every command: compact positional encoding `[tag, field, ...]`,
    immutable. Fields are only ever appended to an existing kind, with a default, so entries
    written by an older node decode the same on a newer one."""


@dataclass(frozen=True, slots=True)
class CommandKind:
    """One registered kind: `tag` in the entry bytes, a stable `name` for logs and the
    inspector, the class, and the command-set version that introduced it."""

    tag: int
    name: str
    cls: type[CommandBase]
    since: int


_BY_TAG: dict[int, CommandKind] = {}
_BY_CLASS: dict[type[CommandBase], CommandKind] = {}

C = TypeVar("C", bound=type[CommandBase])


class RegistryError(TypeError):
    """A kind was declared against the registry's rules (a programming error, at import)."""


def command_kind(name: str, *, since: int) -> Callable[[C], C]:
    """Class decorator that registers a command kind (see the module rules)."""

    def register(cls: C) -> C:
        tag = cls.__struct_config__.tag
        if not isinstance(tag, int) or isinstance(tag, bool) or not 1 <= tag <= MAX_TAG:
            raise RegistryError(f"{cls.__name__}: needs an integer tag=1..{MAX_TAG}, got {tag!r}")
        if not issubclass(cls, CommandBase):
            raise RegistryError(f"{cls.__name__}: must subclass CommandBase")
        if tag in _BY_TAG:
            raise RegistryError(
                f"{cls.__name__}: tag {tag} already belongs to {_BY_TAG[tag].name!r}"
            )
        if any(k.name == name for k in _BY_TAG.values()):
            raise RegistryError(f"{cls.__name__}: kind name {name!r} is already registered")
        if not BASE_COMMAND_SET <= since <= COMMAND_SET_VERSION:
            raise RegistryError(
                f"{cls.__name__}: since={since} is outside {BASE_COMMAND_SET}.."
                f"{COMMAND_SET_VERSION} (raise COMMAND_SET_VERSION first)"
            )
        kind = CommandKind(tag, name, cls, since)
        _BY_TAG[tag] = kind
        _BY_CLASS[cls] = kind
        return cls

    return register


def kinds() -> Iterator[CommandKind]:
    """Every registered kind, by tag."""
    for tag in sorted(_BY_TAG):
        yield _BY_TAG[tag]


def kind_by_tag(tag: int) -> CommandKind | None:
    return _BY_TAG.get(tag)


def kind_of(cmd: CommandBase) -> CommandKind:
    """The registered kind of a command instance."""
    return _BY_CLASS[type(cmd)]
