"""The on-disk format version of a node's data directory, and the migrations between versions.

Rules:
- A data directory records its format in the file `FORMAT` (one line: the integer). It is written
  crash-safely: temp file, fsync, rename, fsync the directory. Anything that creates a data
  directory (a node's first start, a snapshot restore) calls `write_format(dir)` before its
  other files become usable, so that a directory without `FORMAT` always means format 1.
- Versions: 1 = round 1 (raft.db, state/ LMDB, snapshots/; no FORMAT file); 2 = FORMAT file;
  3 = revisions (the MVCC key layout of `storage/mvcc_lmdb.py`: history, sessions);
  4 = the Raft log may keep entries behind its snapshot (`storage/raftlog.py`), which an older
  reader would refuse as corrupt.
  `FORMAT_VERSION` is what this code writes and reads.
- `open_data_dir(dir)` runs at every start, before any other file is opened:
  * empty or missing directory: a fresh node, recorded at `FORMAT_VERSION`;
  * newer than `FORMAT_VERSION`: `DataFormatError`, naming both versions (never touched);
  * older: migrated in place, one step at a time (N -> N + 1), `FORMAT` rewritten after each
    step. A step must be safe to run again if the process dies in the middle of it (it will be,
    since `FORMAT` still says N): write new files beside the old, rename last.
- Adding a version (e.g. a new LMDB key layout): raise `FORMAT_VERSION` by one and register its
  step here, in one place:
      @migration(from_version=2)
      def _revisions_in_keys(data_dir: Path) -> None: ...
  and keep `tests/unit/storage/test_format.py`'s fixture of format 1 opening.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from raftkv.storage.errors import StorageError
from raftkv.storage.fsutil import fsync_dir

FORMAT_VERSION: Final = 4
FORMAT_FILE: Final = "FORMAT"
# Files that show a directory was used by a node (format 1 had these and no FORMAT file).
_NODE_FILES: Final = ("raft.db", "state", "snapshots")

Migration = Callable[[Path], None]
_STEPS: dict[int, tuple[str, Migration]] = {}


class DataFormatError(StorageError):
    """The data directory's format cannot be used by this code (newer, or unreadable)."""


@dataclass(frozen=True, slots=True)
class FormatOutcome:
    """What `open_data_dir` found and did."""

    found: int | None  # None: a fresh directory
    version: int  # the format the directory has now
    migrated: tuple[str, ...]  # names of the steps run, in order


def migration(from_version: int) -> Callable[[Migration], Migration]:
    """Register the step that turns format `from_version` into `from_version + 1`."""

    def register(step: Migration) -> Migration:
        if from_version in _STEPS:
            raise ValueError(f"a migration from format {from_version} is already registered")
        if not 1 <= from_version < FORMAT_VERSION:
            raise ValueError(f"migration from {from_version}: outside 1..{FORMAT_VERSION - 1}")
        _STEPS[from_version] = (step.__name__.strip("_"), step)
        return step

    return register


def steps() -> list[tuple[int, str]]:
    """(from_version, name) of every registered step, in order."""
    return [(v, _STEPS[v][0]) for v in sorted(_STEPS)]


def read_format(data_dir: Path) -> int | None:
    """The directory's format: None if it is fresh (nothing a node wrote), 1 if it predates the
    FORMAT file, else the number in it."""
    path = data_dir / FORMAT_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if any((data_dir / name).exists() for name in _NODE_FILES):
            return 1
        return None
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read the data format: {exc}") from exc
    value = raw.strip()
    if not value.isdigit() or int(value) < 1:  # bytes.isdigit: ASCII digits only
        raise DataFormatError(f"{path}: not a data format version: {raw[:40]!r}")
    return int(value)


def write_format(data_dir: Path, version: int = FORMAT_VERSION) -> None:
    """Record `version` as the directory's format, crash-safely."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / FORMAT_FILE
    tmp = data_dir / f"{FORMAT_FILE}.tmp"
    with tmp.open("w", encoding="ascii") as f:
        f.write(f"{version}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(data_dir)


def refuse_newer(data_dir: Path) -> int | None:
    """`read_format`, refusing a directory a newer raftkv wrote. Called before anything is
    written into the directory (member files included), so a refused directory stays as the
    newer version left it."""
    found = read_format(data_dir)
    if found is not None and found > FORMAT_VERSION:
        raise DataFormatError(
            f"{data_dir}: data format {found} was written by a newer raftkv; this one reads "
            f"formats up to {FORMAT_VERSION}. Run the newer version (a downgrade needs a "
            "snapshot restore into an empty directory)"
        )
    return found


def open_data_dir(data_dir: Path) -> FormatOutcome:
    """Check (and, if older, migrate) `data_dir` before a node opens it; see the module rules."""
    found = refuse_newer(data_dir)
    if found is None:
        write_format(data_dir)
        return FormatOutcome(None, FORMAT_VERSION, ())
    done: list[str] = []
    for version in range(found, FORMAT_VERSION):
        if version not in _STEPS:  # pragma: no cover - test_format checks the chain
            raise DataFormatError(f"{data_dir}: no migration from data format {version}")
        name, step = _STEPS[version]
        step(data_dir)
        write_format(data_dir, version + 1)
        done.append(name)
    return FormatOutcome(found, FORMAT_VERSION, tuple(done))


# -- the steps ---------------------------------------------------------------------------------
@migration(from_version=1)
def _record_format(data_dir: Path) -> None:
    """1 -> 2: the layout is unchanged; the FORMAT file (written after this step) is new."""


@migration(from_version=2)
def _mvcc_layout(data_dir: Path) -> None:
    """2 -> 3: the state gets revisions. Opening it migrates it in one LMDB transaction (every
    key at create = mod revision 1, version 1: the same on every node), so a crash midway
    leaves it as it was and the step runs again."""
    from raftkv.storage.state_lmdb import LmdbState  # the LMDB layer; format.py stays light

    state = data_dir / "state"
    if state.exists():
        LmdbState.open(state).close()


@migration(from_version=3)
def _log_keeps_entries(data_dir: Path) -> None:
    """3 -> 4: nothing to rewrite (a format-3 log, which starts right after its snapshot, is a
    valid format-4 log); from now on snapshots keep `raft.snapshot_keep_entries` entries
    behind them on disk, which format-3 code cannot read, hence the new number."""
