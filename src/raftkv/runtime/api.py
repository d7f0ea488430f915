"""The contract between the HTTP server (`raftkv.server`) and the Raft runtime.

Rules:
- Pure typing: records, exceptions and a `Protocol`; no asyncio work, no I/O. The server is
  written against `KVNode` only, so it can be tested with a fake and the runtime can change freely
  behind it.
- Every outcome a caller must handle differently is its own exception type:
    NotLeaderError     this node is not the leader; the write was NOT proposed (safe to forward)
    NoLeaderError      no leader became known within the configured wait; nothing was proposed
    OperationTimeout   proposed/read but not completed in time: the outcome is UNKNOWN
    NodeStopping       the node is shutting down; the outcome of an in-flight write is unknown
    NodeHalted         the node stopped applying at a committed entry it cannot apply
                       (`HaltReport`, runtime/halt.py); it serves no reads or writes until
                       an operator acts; the outcome of an in-flight write is unknown
- `write` returns only once the command is committed AND applied locally, so a following
  local read sees it. `read(linearizable=True)` works on any node (ReadIndex via the leader);
  `lease=True` too: the leader serves it from its lease when it holds one (thesis §6.4.1),
  anything else falls back to ReadIndex;
  `min_revision=N` first waits until this node has applied index N (revisions are indexes).
- Commands that carry time (`OpenSession`, `SessionRequest`) get the proposing leader's clock
  stamped by the runtime; whatever the caller put in `time_ms` is replaced.
- Callers may cancel `write`/`read` (the server applies its own request timeout); the
  runtime must treat a cancelled wait like a timeout: the proposal may still commit.
- `SoonNode` (optional, RaftKVNode has it) is the same `read`/`write` without a coroutine, for
  the fast HTTP engine's hot path (issue 12): `*_soon` does the synchronous part at once and
  returns the runtime's own waiter future (or None: a read may run now), or raises `MustWait`
  when only the coroutine can wait for what is missing (then nothing was proposed or joined);
  the caller passes the completed future to `*_settled`, which raises what `read`/`write` would
  have raised (a cancelled future: CancelledError, like a cancelled `read`/`write`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, TypeVar, runtime_checkable

from raftkv.kv.commands import Command, Result
from raftkv.kv.mvcc import MVCCStore

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")

ROLE_LEADER: Final = "Leader"
ROLE_FOLLOWER: Final = "Follower"
ROLE_CANDIDATE: Final = "Candidate"
ROLE_PRE_CANDIDATE: Final = "PreCandidate"
ROLE_HALTED: Final = "Halted"  # stepped out of Raft at an entry it cannot apply (halt.py)
ROLES: Final = frozenset(
    {ROLE_LEADER, ROLE_FOLLOWER, ROLE_CANDIDATE, ROLE_PRE_CANDIDATE, ROLE_HALTED}
)


@dataclass(frozen=True, slots=True)
class HaltReport:
    """Why a node halted: the committed entry it cannot apply, and what an operator can do."""

    index: int  # the entry; everything below it is applied, nothing at or above it
    term: int
    tag: int | None  # an unknown command kind's tag (a newer version's entry), else None
    error: str
    action: str  # what to do, in words
    since: str  # RFC 3339 time of the halt

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "term": self.term,
            "tag": self.tag,
            "error": self.error,
            "action": self.action,
            "since": self.since,
        }


@dataclass(frozen=True, slots=True)
class LocalStatus:
    """One node's own view of itself; served as JSON by `GET /cluster/local`."""

    node_id: str
    role: str  # one of ROLES
    term: int
    leader_id: str | None  # None while no leader is known in `term`
    commit_index: int  # highest index known committed
    applied_index: int  # applied_index <= commit_index
    last_index: int  # last index in the local log
    raft_address: str  # advertised "host:port" for peers
    http_address: str  # advertised "host:port" for clients
    # Highest data format and command set this node understands (runtime/features.py); an
    # older node's /cluster/local has neither: 1 and 1.
    format_version: int = 1
    command_set: int = 1
    halted: HaltReport | None = None  # set once the node halted (role "Halted")
    # Its data disk (server/alarms.py): free bytes (None: not reported) and its margin.
    disk_free_bytes: int | None = None
    min_free_bytes: int = 0


class NotLeaderError(Exception):
    """This node is not the leader. Nothing was proposed, so the request may be forwarded."""

    def __init__(self, leader_id: str | None, leader_http: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader_id or 'unknown'})")
        self.leader_id = leader_id
        self.leader_http = leader_http  # the leader's HTTP "host:port", when known


class MustWait(Exception):
    """`SoonNode`: this call can only be made by the coroutine (`read`/`write`); nothing was
    done (no proposal, no read joined)."""


class RetryWrite(Exception):
    """`SoonNode.write_settled`: the proposal was overwritten by another leader's entry
    (definitely not applied); `write` would have proposed it again: do so with `write`."""


class NoLeaderError(Exception):
    """No leader became known within the configured wait; nothing was proposed."""


class OperationTimeout(Exception):
    """A proposal or read did not complete in time. A write's outcome is unknown."""


class NodeStopping(Exception):
    """The node is shutting down."""


class NodeHalted(Exception):
    """The node halted at a committed entry it cannot apply (see `HaltReport`)."""

    def __init__(self, report: HaltReport) -> None:
        super().__init__(
            f"this node halted at committed entry {report.index}, which it cannot apply; "
            "it serves no reads or writes (use another node)"
        )
        self.report = report


class FeatureNotEnabled(Exception):
    """The leader refused a command kind newer than the cluster's command set (some member
    cannot apply it yet; runtime/features.py). Nothing was proposed."""

    def __init__(self, kind: str, needs: int, cluster_command_set: int, waiting_for: list[str]):
        super().__init__(
            f"{kind!r} needs command set {needs}; the cluster is at {cluster_command_set} until "
            f"every member runs a version that has it (waiting for: {', '.join(waiting_for)})"
        )
        self.kind = kind
        self.needs = needs
        self.cluster_command_set = cluster_command_set
        self.waiting_for = waiting_for


class KVNode(Protocol):
    """What the HTTP server needs from a running node."""

    @property
    def node_id(self) -> str: ...

    async def write(self, cmd: Command) -> Result:
        """Committed and applied on return. Raises NotLeaderError on a follower."""
        ...

    async def read(
        self,
        fn: Callable[[MVCCStore], T],
        *,
        linearizable: bool,
        min_revision: int = 0,
        lease: bool = False,
    ) -> T:
        """`fn` over one consistent instant of the local applied state, once it has applied
        `min_revision` and (if linearizable) every write acknowledged before the call;
        `lease` (with linearizable) may confirm that from the leader's lease instead.
        Bounded by the node's request timeout (then OperationTimeout, or NoLeaderError): the
        HTTP layer arms no timer of its own around a single-key read."""
        ...

    def local_status(self) -> LocalStatus: ...

    def is_ready(self) -> bool:
        """Knows a leader and has applied at least the commit index known at the leader."""
        ...

    def peer_http_addresses(self) -> Mapping[str, str]:
        """Node id -> HTTP "host:port", for every node of the cluster (this one included)."""
        ...

    def peer_raft_addresses(self) -> Mapping[str, str]:
        """Node id -> Raft "host:port", for every node of the cluster (this one included)."""
        ...


@runtime_checkable
class SoonNode(Protocol):
    """`read`/`write` without a coroutine (module rules), for the fast HTTP engine."""

    def read_soon(
        self, *, linearizable: bool, min_revision: int = 0, lease: bool = False
    ) -> asyncio.Future[None] | None:
        """None: a read may run on the applied state now (`read_applied`); else the future to
        wait for first (then `read_settled`). Raises MustWait, or what `read` raises at once."""
        ...

    def read_settled(self, fut: asyncio.Future[None]) -> None:
        """After `fut` completed: return (read now, `read_applied`) or raise as `read`."""
        ...

    def read_applied(self, fn: Callable[[MVCCStore], T]) -> T:
        """`fn` over one consistent instant of the applied state, now."""
        ...

    def write_soon(self, cmd: Command) -> asyncio.Future[object]:
        """`cmd` proposed; the future completes when it is applied (then `write_settled`).
        Raises MustWait, or what `write` raises at once."""
        ...

    def write_settled(self, fut: asyncio.Future[object]) -> Result:
        """After `fut` completed: the apply result, or raises as `write` (RetryWrite: call
        `write` with the same command)."""
        ...
