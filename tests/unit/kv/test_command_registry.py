"""The command-kind registry: tags fixed forever, the static union matches it, unknown kinds are
refused by name and tag."""

from __future__ import annotations

import typing
from pathlib import Path

import msgspec
import pytest

from raftkv.codec.commands import UnknownCommandKind, decode_command, encode_command
from raftkv.kv.commands import Command, Delete, Put
from raftkv.kv.registry import (
    BASE_COMMAND_SET,
    COMMAND_SET_VERSION,
    MAX_TAG,
    CommandBase,
    RegistryError,
    command_kind,
    kind_by_tag,
    kind_of,
    kinds,
)

GOLDEN = Path(__file__).with_name("command_kinds.golden")


def _golden() -> list[tuple[int, str, int]]:
    rows = []
    for line in GOLDEN.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            tag, name, since = line.split()
            rows.append((int(tag), name, int(since)))
    return rows


def test_golden_list_is_append_only_in_tag_order() -> None:
    rows = _golden()
    tags = [r[0] for r in rows]
    assert tags == sorted(tags), "append new kinds at the end, with a new tag"
    assert len(set(tags)) == len(tags), "a tag is listed twice"
    assert len({r[1] for r in rows}) == len(rows), "a kind name is listed twice"
    assert rows[:2] == [(1, "put", 1), (2, "delete", 1)]  # in every log since round 1


def test_registry_matches_the_golden_list() -> None:
    registered = [(k.tag, k.name, k.since) for k in kinds()]
    golden = _golden()
    for tag, name, since in golden:
        kind = kind_by_tag(tag)
        if kind is None:
            continue  # a retired kind keeps its line (and its tag) forever
        assert (kind.name, kind.since) == (name, since), (
            f"tag {tag} was {name!r} since {since}: tags are never renamed or renumbered"
        )
    missing = set(registered) - set(golden)
    assert not missing, f"append these to {GOLDEN.name}: {sorted(missing)}"


def test_static_union_is_exactly_the_registry() -> None:
    assert set(typing.get_args(Command)) == {k.cls for k in kinds()}


def test_every_kind_round_trips_and_has_a_valid_since() -> None:
    for kind in kinds():
        assert 1 <= kind.tag <= MAX_TAG
        assert BASE_COMMAND_SET <= kind.since <= COMMAND_SET_VERSION
        assert kind.cls.__struct_config__.tag == kind.tag
    assert kind_of(Put("k", "v")).name == "put"
    assert kind_of(Delete("k")).tag == 2


def test_unknown_kind_is_named_by_tag() -> None:
    payload = msgspec.msgpack.encode([42, "k"])
    with pytest.raises(UnknownCommandKind, match="unknown command kind tag 42") as info:
        decode_command(b"\x01" + payload)
    assert info.value.tag == 42
    assert "1 put, 2 delete" in str(info.value)
    # A known tag with wrong fields is malformed, not unknown.
    with pytest.raises(Exception, match="malformed") as bad:
        decode_command(b"\x01" + msgspec.msgpack.encode([1, "k"]))
    assert not isinstance(bad.value, UnknownCommandKind)
    assert decode_command(encode_command(Put("k", "v"))) == Put("k", "v")


def test_registry_refuses_a_reused_tag_or_name() -> None:
    with pytest.raises(RegistryError, match="tag 1 already belongs to 'put'"):

        @command_kind("other", since=1)
        class Other(CommandBase, frozen=True, tag=1):
            key: str

    with pytest.raises(RegistryError, match="'delete' is already registered"):

        @command_kind("delete", since=1)
        class Delete2(CommandBase, frozen=True, tag=MAX_TAG):
            key: str

    with pytest.raises(RegistryError, match="integer tag"):

        @command_kind("stringy", since=1)
        class Stringy(CommandBase, frozen=True, tag="s"):
            key: str

    with pytest.raises(RegistryError, match="raise COMMAND_SET_VERSION first"):

        @command_kind("future", since=COMMAND_SET_VERSION + 1)
        class Future(CommandBase, frozen=True, tag=MAX_TAG):
            key: str

    assert kind_by_tag(MAX_TAG) is None  # nothing half-registered
