"""Measure DurableLog.save(): µs per 1-entry save and entries/s at 64 entries per save.

Not a test (pytest does not collect it; timings are never asserted). Run:
    .venv/bin/python tests/unit/storage/perf_raftlog.py [directory]
The directory must be on the disk the node will use: the figure is dominated by its fsync.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from raftkv.codec.commands import encode_command
from raftkv.kv.commands import Put
from raftkv.raft.types import Entry, HardState, Index, Term
from raftkv.storage.raftlog import DurableLog


def run(path: Path, batch: int, saves: int) -> float:
    """Seconds per save of `batch` entries (each a 100-byte-value Put, like a small client PUT)."""
    data = encode_command(Put("user:0000001", "v" * 100))
    with DurableLog.open(path) as log:
        index = 0
        start = time.perf_counter()
        for _ in range(saves):
            entries = [Entry(Term(1), Index(index + i + 1), data=data) for i in range(batch)]
            index += batch
            log.save(HardState(Term(1), None, Index(index)), entries, None)
        return (time.perf_counter() - start) / saves


def main() -> None:
    base = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        one = run(Path(tmp) / "one.db", 1, 2000)
        many = run(Path(tmp) / "many.db", 64, 500)
    print(f"1 entry per save:   {one * 1e6:8.1f} µs per save")
    print(f"64 entries per save: {many * 1e6:8.1f} µs per save = {64 / many:,.0f} entries/s")


if __name__ == "__main__":
    main()
