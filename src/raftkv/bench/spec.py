"""What one load run is: the target, the operation mix, how long, how many connections.

Rules: a spec is plain data; `wrk.py` and `pyload.py` must produce the same requests from it
(same key names, same value sizes), so that switching generator changes no workload.
Key names: writes of mode "put" go to unique keys `<prefix>-<thread>-<seq>`; reads, and the
writes of mode "mixed", go to the key space `<prefix>-0 .. <prefix>-<keys-1>`, which the caller
fills first (`keyspace_keys`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

Mode = Literal["put", "get", "mixed"]
System = Literal["raftkv", "etcd"]
MODES: Final = ("put", "get", "mixed")

# (completed, errors) so far -> None; called from the generator's polling loop.
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class LoadSpec:
    url: str  # base URL of the target node, e.g. http://127.0.0.1:8081
    system: System = "raftkv"
    mode: Mode = "put"
    requests: int = 0  # stop after this many completions; 0: run for duration_s
    duration_s: float = 10.0  # the run's length, or its upper bound when requests > 0
    concurrency: int = 64
    value_size: int = 100
    keys: int = 1000
    read_ratio: float = 0.5
    # "lease": raftkv's lease read; etcd has none and reads linearizably (ReadIndex) instead
    consistency: Literal["linearizable", "lease", "stale"] = "linearizable"
    prefix: str = "bench"
    samples: bool = False  # record every request's latency (for plots)
    timeout_s: float = 10.0  # per request

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.requests < 0 or self.duration_s <= 0:
            raise ValueError("requests must be >= 0 and duration positive")
        if not 0 <= self.read_ratio <= 1:
            raise ValueError("read ratio must be in [0, 1]")
        if self.value_size < 0 or self.keys < 1:
            raise ValueError("value size must be >= 0 and keys >= 1")


def keyspace_keys(prefix: str, keys: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(keys)]
