"""The declared config schema: one place per key; validation, defaults, messages and the README
table all come from it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
import pytest
import yaml

from raftkv.server.config import ConfigError, load_settings
from raftkv.server.config_doc import config_tables, splice
from raftkv.server.config_fields import check_value, fields_of, markdown_rows, parse_struct
from raftkv.server.config_schema import (
    OVERRIDES,
    ConfigFile,
    RaftSection,
    ServerSection,
)
from tests.unit.server.test_server_config import SEED, write

REPO = Path(__file__).resolve().parents[3]


def test_readme_configuration_table_is_generated_from_the_schema() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert splice(readme) == readme, "run ./scripts/config-table.sh and commit README.md"
    for f in fields_of(ConfigFile):
        assert f"`{f.name}." in config_tables()


def test_every_key_and_override_is_described() -> None:
    for section in fields_of(ConfigFile):
        assert isinstance(section.type, msgspec.inspect.StructType)
        for row in markdown_rows(section.type.cls, section.name):
            assert not row.endswith("|  |"), f"no description: {row}"
    assert all(o.description for o in OVERRIDES)
    assert len({o.env for o in OVERRIDES}) == len(OVERRIDES)


def test_settings_config_holds_the_file_with_defaults_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, SEED + "server:\n  leader_wait_ms: 1000\n")
    s = load_settings(
        {"config": path, "node_id": "node-2", "data_dir": tmp_path / "d"},
        env={"KV_LOG_LEVEL": "WARN", "KV_LOG_FORMAT": "json"},
    )
    assert s.config.server.leader_wait_ms == 1000 == s.leader_wait_ms
    assert s.config.server.request_timeout_ms == ServerSection().request_timeout_ms
    assert s.config.raft == RaftSection(election_timeout_ms=100, heartbeat_timeout_ms=25)
    assert s.config.logging.level == "warning" == s.log_level  # env over file, normalized
    assert s.config.logging.format == "json" == s.log_format
    assert s.config.cluster.data_dir == str(tmp_path / "d")
    assert s.data_dir == tmp_path / "d" / "node-2"


def test_schema_is_a_msgspec_schema_that_agrees_with_our_checks(tmp_path: Path) -> None:
    text = SEED + "server:\n  max_value_bytes: 4096\n"
    doc = yaml.safe_load(text)
    ours = load_settings({"config": write(tmp_path, text), "node_id": "node-1"}, env={}).config
    assert msgspec.convert(doc, ConfigFile) == ours
    with pytest.raises(msgspec.ValidationError):  # unknown keys: forbid_unknown_fields
        msgspec.convert({**doc, "raft": {"election_timeout": 1}}, ConfigFile)
    with pytest.raises(msgspec.ValidationError):  # limits come from Meta
        msgspec.convert({**doc, "server": {"max_value_bytes": 0}}, ConfigFile)


def test_adding_a_key_is_one_field() -> None:
    # What a later developer does: one field with type, limits, default and description.
    class Raft2(RaftSection, frozen=True, kw_only=True):
        keep_entries: Annotated[
            int, msgspec.Meta(ge=0, le=1000, description="entries kept after a snapshot")
        ] = 50

    assert parse_struct(Raft2, {}, "raft").keep_entries == 50
    assert parse_struct(Raft2, {"keep_entries": 0}, "raft").keep_entries == 0
    with pytest.raises(ConfigError) as info:
        parse_struct(Raft2, {"keep_entries": -1}, "raft")
    assert str(info.value) == "raft.keep_entries: must be an integer >= 0 (got -1)"
    with pytest.raises(ConfigError, match=r"^raft.keep_entries: must be at most 1000$"):
        parse_struct(Raft2, {"keep_entries": 1001}, "raft")
    with pytest.raises(ConfigError, match=r"^raft.keep_entrys: unknown key \(expected one of "):
        parse_struct(Raft2, {"keep_entrys": 1}, "raft")
    # The section's cross-field rules still apply to the extended section.
    with pytest.raises(ConfigError, match=r"^raft.election_timeout_ms: must be greater"):
        parse_struct(Raft2, {"election_timeout_ms": 25}, "raft")
    row = "| `raft.keep_entries` | integer ≥ 0, ≤ 1000 | `50` | entries kept after a snapshot |"
    assert row in markdown_rows(Raft2, "raft")


def test_types_without_a_dedicated_check_name_the_field() -> None:
    class Extra(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
        tags: Annotated[list[str], msgspec.Meta(description="tags")] = []
        on: Annotated[bool, msgspec.Meta(description="switch")] = False

    assert parse_struct(Extra, {"tags": ["a"], "on": True}, "x") == Extra(tags=["a"], on=True)
    with pytest.raises(ConfigError, match=r"^x\.tags: "):
        parse_struct(Extra, {"tags": [1]}, "x")
    with pytest.raises(ConfigError, match=r"^x\.on: must be true or false \(got 1\)$"):
        parse_struct(Extra, {"on": 1}, "x")
    assert check_value(RaftSection, "snapshot_every", 5, "--x") == 5


def test_error_order_is_kept_key_names_then_node_ids_then_values(tmp_path: Path) -> None:
    bad_value = SEED.replace("election_timeout_ms: 100", "election_timeout_ms: 110")
    path = write(tmp_path, bad_value)
    with pytest.raises(ConfigError, match=r"^--node-id: unknown node id 'node-9'"):
        load_settings({"config": path, "node_id": "node-9"}, env={})
    path = write(tmp_path, bad_value.replace("  level:", "  levle:"))
    with pytest.raises(ConfigError, match=r"^logging.levle: unknown key"):
        load_settings({"config": path, "node_id": "node-9"}, env={})
