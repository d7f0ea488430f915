"""raftkv.check: client history records and the per-key linearizability checker.

Pure (stdlib + msgspec): used by the simulator and the chaos tool alike.
"""

from raftkv.check.history import History, Op, OpKind, Outcome, dumps_jsonl, loads_jsonl
from raftkv.check.linearizability import check_history
from raftkv.check.result import CheckResult, KeyResult, Verdict, Witness

__all__ = [
    "CheckResult",
    "History",
    "KeyResult",
    "Op",
    "OpKind",
    "Outcome",
    "Verdict",
    "Witness",
    "check_history",
    "dumps_jsonl",
    "loads_jsonl",
]
