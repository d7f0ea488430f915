"""Data-directory format versions: recorded, refused when newer, migrated when older (from a
directory written by round 1's code, commit e2e4924)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from raftkv.storage import format as fmt
from raftkv.storage.format import (
    FORMAT_FILE,
    FORMAT_VERSION,
    DataFormatError,
    open_data_dir,
    read_format,
    write_format,
)
from raftkv.storage.raftlog import DurableLog
from raftkv.storage.state_lmdb import LmdbState

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "datadir-format1-e2e4924.tar.gz"


def unpack_format1(tmp_path: Path) -> Path:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "node-1"


def test_fresh_directory_is_recorded_at_the_current_format(tmp_path: Path) -> None:
    d = tmp_path / "new" / "node-1"
    outcome = open_data_dir(d)
    assert (outcome.found, outcome.version, outcome.migrated) == (None, FORMAT_VERSION, ())
    assert (d / FORMAT_FILE).read_text() == f"{FORMAT_VERSION}\n"
    assert read_format(d) == FORMAT_VERSION
    assert not (d / f"{FORMAT_FILE}.tmp").exists()
    assert open_data_dir(d).migrated == ()  # the next start changes nothing


def test_newer_format_is_refused_and_left_alone(tmp_path: Path) -> None:
    write_format(tmp_path, FORMAT_VERSION + 1)
    (tmp_path / "raft.db").write_bytes(b"from the future")
    with pytest.raises(DataFormatError) as info:
        open_data_dir(tmp_path)
    message = str(info.value)
    assert f"data format {FORMAT_VERSION + 1} was written by a newer raftkv" in message
    assert f"reads formats up to {FORMAT_VERSION}" in message and str(tmp_path) in message
    assert read_format(tmp_path) == FORMAT_VERSION + 1
    assert (tmp_path / "raft.db").read_bytes() == b"from the future"


@pytest.mark.parametrize("text", ["", "two\n", "0\n", "-1\n", "٣\n"])
def test_unreadable_format_file_is_refused(tmp_path: Path, text: str) -> None:
    (tmp_path / FORMAT_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(DataFormatError, match="not a data format version"):
        open_data_dir(tmp_path)


def test_migration_steps_form_one_chain_to_the_current_format() -> None:
    assert [v for v, _ in fmt.steps()] == list(range(1, FORMAT_VERSION))
    with pytest.raises(ValueError, match="already registered"):
        fmt.migration(from_version=1)(lambda d: None)
    with pytest.raises(ValueError, match="outside"):
        fmt.migration(from_version=FORMAT_VERSION)(lambda d: None)


def test_format1_directory_from_e2e4924_is_migrated_and_still_reads(tmp_path: Path) -> None:
    d = unpack_format1(tmp_path)
    assert read_format(d) == 1  # no FORMAT file: round 1
    outcome = open_data_dir(d)
    assert outcome.found == 1 and outcome.version == FORMAT_VERSION
    assert outcome.migrated == tuple(name for _, name in fmt.steps())
    assert read_format(d) == FORMAT_VERSION

    with DurableLog.open(d / "raft.db") as log:
        loaded = log.load()
    assert loaded.snapshot is not None and loaded.snapshot.index == 9
    state = LmdbState.open(d / "state")
    try:
        assert state.applied_index >= 14
        last = state.get("last")
        assert last is not None and last.value == "written by e2e4924"
        assert state.get("k03") is None
        assert dict(state.items("k")) == {
            f"k{i:02d}": f"value {i} ключ" for i in range(12) if i != 3
        }
    finally:
        state.close()


def test_a_failed_step_leaves_the_old_format_and_is_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = unpack_format1(tmp_path)
    calls: list[Path] = []

    def crashing(data_dir: Path) -> None:
        calls.append(data_dir)
        raise OSError("disk went away mid-migration")

    monkeypatch.setitem(fmt._STEPS, 1, ("crashing", crashing))
    with pytest.raises(OSError, match="mid-migration"):
        open_data_dir(d)
    assert read_format(d) == 1  # FORMAT is rewritten only after a step completes
    monkeypatch.undo()
    assert open_data_dir(d).found == 1
    assert read_format(d) == FORMAT_VERSION and calls == [d]
