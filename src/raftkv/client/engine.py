"""The client's one brain, sans-I/O: which node to ask, when to retry, when a retry is unsafe.

Both `Client` (threads, http.client) and `AsyncClient` (asyncio, aiohttp) run the same
generators: a flow yields `Send` / `Sleep` actions and is resumed with the `Outcome` (a `Reply`,
`NotSent`, `MaybeSent`). The drivers only perform actions; every decision is made here, once,
and is unit-tested by driving the generators with scripted outcomes and a fake clock.

Rules (exactly-once, ARCHITECTURE.md §4):
- A WRITE is sent a second time ONLY when no earlier copy can have been applied (the connection
  was never made: `NotSent`; or the server said so: 503 `no_leader`/`not_leader`/
  `leader_unreachable`/`node_stopping`), or under a session: then every copy carries the same
  (`Raftkv-Session`, `Raftkv-Seq`) and the server applies it once and replays the first reply
  (Raft thesis §6.3). Without a session, a write whose copy may have arrived (connection lost
  after sending, our timeout, 504) raises `OutcomeUnknown`, never a silent re-send.
- Session-less writes ask the transport for a fresh connection (`Send.fresh`): on a pooled one, a
  "connection closed" could mean "closed while idle" or "died after reading the request".
- READs and IDEMPOTENT calls are retried on any failure until the operation's deadline
  (`timeout_s`, retries and failover included); each attempt is bounded by `request_timeout_s`.
- Leader discovery: writes go straight to the leader when known (saving the follower's
  forwarding hop). It is learnt from `/cluster/status` (asked when a write finds no leader known)
  and from `not_leader` replies; it is forgotten when the leader fails to answer. Reads go to
  the leader too when known (any node serves linearizable reads), else to the current endpoint.
- A node that fails to connect is skipped for `DOWN_S` while others remain; success clears it.
- Session expiry (409 `session_expired`): if no copy of the write can have arrived, a new
  session is opened and the write sent under it; otherwise `OutcomeUnknown`. The same for
  409 `stale_request` (the server forgot replies below a floor that passed our seq): refused
  before applying, so a first copy is re-sent under a new seq; after a lost copy, unknown.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from raftkv.client import protocol
from raftkv.client.errors import (
    BadRequest,
    Forbidden,
    OutcomeUnknown,
    RaftkvError,
    ServerError,
    SessionExpired,
    StaleRequest,
    TLSError,
    Unavailable,
)
from raftkv.client.options import ClientOptions
from raftkv.client.protocol import Call, Kind
from raftkv.client.types import ClusterStatus, SessionInfo
from raftkv.client.wire import Reply

T = TypeVar("T")

DOWN_S: Final = 2.0  # skip a node that refused a connection for this long (others permitting)
BACKOFF_FIRST_S: Final = 0.02  # an election takes ~100-200 ms with the seed's timing
BACKOFF_MAX_S: Final = 0.5
DISCOVERY_INTERVAL_S: Final = 0.5  # ask /cluster/status at most this often
SESSION_WAIT_S: Final = 0.005  # poll interval of writes waiting for another's session open
SESSION_REFRESH: Final = 0.8  # reopen a session idle for this share of its TTL before using it
_NOTHING_APPLIED: Final = frozenset(
    {"no_leader", "not_leader", "leader_unreachable", "node_stopping"}
)
_MAYBE_APPLIED: Final = frozenset({"timeout", "outcome_unknown"})
_TOKEN_REFUSED: Final = frozenset({"token_expired", "invalid_token"})


# -- actions and outcomes ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    endpoint: str  # base URL: scheme://host:port
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    timeout_s: float  # the whole attempt: connect, send, reply
    connect_timeout_s: float
    fresh: bool  # use a new connection and close it after: failures are then attributable


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class NotSent:
    """Connecting failed: not one byte of the request left."""

    reason: str
    tls: bool = False  # the server's certificate failed verification


@dataclass(frozen=True, slots=True)
class MaybeSent:
    """Failed once connected: the server may have acted on the request."""

    reason: str
    reused: bool = False  # on a pooled connection, before any reply byte (maybe idle-closed)


Action = Send | Sleep
Outcome = Reply | NotSent | MaybeSent | None
Flow = Generator[Action, Outcome, T]
Program = Generator[Call[Any], Any, T]


def single(call: Call[T]) -> Program[T]:
    """The program of one call."""
    result: T = yield call
    return result


# -- sessions ----------------------------------------------------------------------------------


class _Session:
    """One server session: sequence numbers and which replies are still awaited."""

    def __init__(self, info: SessionInfo, now: float) -> None:
        self.id = str(info.session_id)
        self.ttl_s = info.ttl_s
        self.last_used = now  # guarded by the engine's lock
        self._next_seq = 1
        self._in_flight: set[int] = set()

    def begin(self, now: float) -> int:
        seq = self._next_seq
        self._next_seq += 1
        self._in_flight.add(seq)
        self.last_used = now
        return seq

    def ack(self) -> int:
        """Every reply below this seq has been received (or given up on)."""
        return min(self._in_flight) if self._in_flight else self._next_seq

    def end(self, seq: int) -> None:
        # Answered, or given up on (never re-sent): either way the server may forget it.
        self._in_flight.discard(seq)

    def stale(self, now: float) -> bool:
        return self.ttl_s > 0 and now - self.last_used > self.ttl_s * SESSION_REFRESH


# -- the engine --------------------------------------------------------------------------------


class Engine:
    """Shared state (leader, down nodes, session) and the flows. Thread-safe: state changes
    happen under a lock that is never held across a yield."""

    def __init__(self, options: ClientOptions, now: Callable[[], float]) -> None:
        self.options = options
        self._now = now
        self._lock = threading.Lock()
        self._leader: str | None = None  # base URL of the last known leader
        self._cursor = 0  # index into endpoints of the node used while no leader is known
        self._down_until: dict[str, float] = {}
        self._last_discovery = -math.inf
        self._session: _Session | None = None
        self._sessions_supported: bool | None = None if options.sessions else False
        self._opening_until = -math.inf  # a session is being opened by some flow until then
        self._token_header: str | None = None  # token_auth: "Bearer <token>" once fetched

    # -- public flows --------------------------------------------------------------------------

    def run(self, program: Program[T]) -> Flow[T]:
        """Run a program: each call it yields is performed (with retries) and its result or
        error sent back into it."""
        result: Any = None
        error: RaftkvError | None = None
        while True:
            try:
                call = program.throw(error) if error is not None else program.send(result)
            except StopIteration as stop:
                value: T = stop.value
                return value
            try:
                result, error = (yield from self.call(call)), None
            except RaftkvError as exc:
                result, error = None, exc

    def call(self, call: Call[T], deadline: float | None = None) -> Flow[T]:
        opts = self.options
        if deadline is None:
            deadline = self._now() + opts.timeout_s
        token_fresh = False  # a token fetched during this call (renew at most once)
        needs_token = opts.token_credentials is not None and call.name != "auth_token"
        if needs_token and self._token_header is None:
            yield from self._fetch_token(deadline)
            token_fresh = True
        session: _Session | None = None
        seq = 0
        if call.kind is Kind.WRITE:
            session = yield from self._session_for_write(deadline)
            if session is not None:
                seq = self._begin(session)
        maybe_delivered = False  # a copy of this call may have reached a server
        discovered = False
        failures = 0
        last: str = "no attempt made"
        try:
            while True:
                remaining = deadline - self._now()
                if remaining <= 0:
                    raise self._give_up(call, maybe_delivered, last)
                if call.kind is Kind.WRITE and not discovered and self.leader is None:
                    discovered = True
                    yield from self._discover(deadline)
                    continue
                endpoint = self._pick()
                send = Send(
                    endpoint,
                    call.method,
                    call.target,
                    self._headers(call, session, seq),
                    call.body,
                    timeout_s=min(remaining, opts.request_timeout_s),
                    connect_timeout_s=min(remaining, opts.connect_timeout_s),
                    fresh=call.kind is Kind.WRITE and session is None,
                )
                outcome = yield send
                pause = 0.0
                match outcome:
                    case Reply() if protocol.is_success(outcome):
                        self._mark_up(endpoint)
                        return call.decode(outcome)
                    case Reply():
                        self._mark_up(endpoint)
                        error = protocol.error_from_reply(outcome, endpoint)
                        last = str(error)
                        if error.code in _NOTHING_APPLIED:
                            self._on_refused(endpoint, error)
                            pause = _backoff(failures)
                        elif (
                            error.code in _TOKEN_REFUSED
                            and opts.token_credentials
                            and (not token_fresh)
                        ):
                            # Authentication runs before the handler: nothing was applied.
                            yield from self._fetch_token(deadline)
                            token_fresh = True
                        elif error.code in _MAYBE_APPLIED or outcome.status == 504:
                            if call.kind is Kind.WRITE and session is None:
                                raise OutcomeUnknown(
                                    error.message,
                                    status=error.status,
                                    code=error.code,
                                    details=error.details,
                                    endpoint=endpoint,
                                ) from error
                            maybe_delivered = True
                            self._forget_leader(endpoint)
                        elif isinstance(error, SessionExpired | StaleRequest) and session:
                            if maybe_delivered:
                                raise self._give_up(call, True, f"{last} while retrying") from error
                            # Refused before applying, and no earlier copy exists: send it
                            # again under a new seq (and a new session if this one expired).
                            if isinstance(error, SessionExpired):
                                self._drop_session(session, seq)
                                session = yield from self._session_for_write(deadline)
                            else:
                                self._end(session, seq)
                            seq = self._begin(session) if session is not None else 0
                        else:
                            raise error
                    case NotSent(tls=True):
                        raise TLSError(
                            f"TLS verification failed: {outcome.reason}", endpoint=endpoint
                        )
                    case NotSent():
                        last = f"{endpoint}: {outcome.reason}"
                        if self._mark_down(endpoint):
                            pause = _backoff(failures)  # every node is down: wait a little
                    case MaybeSent():
                        last = f"{endpoint}: {outcome.reason}"
                        if call.kind is Kind.WRITE and session is None:
                            raise OutcomeUnknown(
                                f"{call.name}: connection lost after sending ({outcome.reason});"
                                " the write may or may not have been applied",
                                endpoint=endpoint,
                            )
                        maybe_delivered = maybe_delivered or call.kind is not Kind.READ
                        if not outcome.reused:
                            self._mark_down(endpoint)
                    case _:
                        raise AssertionError(f"unexpected outcome {outcome!r}")
                failures += 1
                if pause > 0:
                    yield Sleep(min(pause, max(0.0, deadline - self._now())))
        finally:
            if session is not None and seq:
                with self._lock:
                    session.end(seq)

    # -- leader and endpoints ------------------------------------------------------------------

    @property
    def leader(self) -> str | None:
        with self._lock:
            leader = self._leader
            if leader is not None and self._down_until.get(leader, 0.0) > self._now():
                return None
            return leader

    def _pick(self) -> str:
        now = self._now()
        endpoints = self.options.endpoints
        with self._lock:
            leader = self._leader
            if leader is not None and self._down_until.get(leader, 0.0) <= now:
                return leader
            n = len(endpoints)
            for i in range(n):
                candidate = endpoints[(self._cursor + i) % n]
                if self._down_until.get(candidate, 0.0) <= now:
                    self._cursor = (self._cursor + i) % n
                    return candidate
            # Everything is down: the node that was marked down first is retried first.
            return min(endpoints, key=lambda e: self._down_until.get(e, 0.0))

    def _mark_down(self, endpoint: str) -> bool:
        """Skip `endpoint` for a while. Returns whether every configured node is now down."""
        now = self._now()
        with self._lock:
            self._down_until[endpoint] = now + DOWN_S
            if self._leader == endpoint:
                self._leader = None
            return all(self._down_until.get(e, 0.0) > now for e in self.options.endpoints)

    def _mark_up(self, endpoint: str) -> None:
        with self._lock:
            self._down_until.pop(endpoint, None)

    def _forget_leader(self, endpoint: str) -> None:
        with self._lock:
            if self._leader == endpoint:
                self._leader = None

    def _set_leader(self, http_address: str | None) -> None:
        if not http_address:
            return
        scheme = self.options.endpoints[0].split("://", 1)[0]
        with self._lock:
            self._leader = f"{scheme}://{http_address}"

    def _on_refused(self, endpoint: str, error: RaftkvError) -> None:
        """A 503 that guarantees nothing was applied: learn what it tells about the leader."""
        hint = error.details.get("leader_http")
        if error.code == "not_leader" and isinstance(hint, str) and hint:
            self._set_leader(hint)
            return
        endpoints = self.options.endpoints
        with self._lock:
            self._leader = None
            if error.code in ("node_stopping", "leader_unreachable") and endpoint in endpoints:
                # Try another node: this one is leaving, or cannot reach the leader.
                self._cursor = (endpoints.index(endpoint) + 1) % len(endpoints)

    def _discover(self, deadline: float) -> Flow[None]:
        """Ask nodes for `/cluster/status` until one names a leader (or none can)."""
        with self._lock:
            if self._now() - self._last_discovery < DISCOVERY_INTERVAL_S:
                return
            self._last_discovery = self._now()
        status_call = protocol.cluster_status()
        tried: set[str] = set()
        while len(tried) < len(self.options.endpoints):
            remaining = deadline - self._now()
            if remaining <= 0:
                return
            endpoint = self._pick()
            if endpoint in tried:
                return
            tried.add(endpoint)
            outcome = yield Send(
                endpoint,
                status_call.method,
                status_call.target,
                self._headers(status_call, None, 0),
                b"",
                timeout_s=min(remaining, self.options.request_timeout_s),
                connect_timeout_s=min(remaining, self.options.connect_timeout_s),
                fresh=False,
            )
            match outcome:
                case Reply() if protocol.is_success(outcome):
                    self._mark_up(endpoint)
                    try:
                        status = status_call.decode(outcome)
                    except ServerError:
                        return
                    self._set_leader(leader_http_address(status))
                    return
                case NotSent(tls=True):
                    raise TLSError(f"TLS verification failed: {outcome.reason}", endpoint=endpoint)
                case NotSent() | MaybeSent():
                    self._mark_down(endpoint)
                case _:
                    return  # an error reply (auth?): the write itself will report it

    # -- sessions ------------------------------------------------------------------------------

    def _session_for_write(self, deadline: float) -> Flow[_Session | None]:
        """The session to send a write under, opening one if needed (one opener at a time:
        concurrent writes wait for it instead of each opening a session of their own)."""
        while True:
            now = self._now()
            with self._lock:
                if self._sessions_supported is False:
                    return None
                session = self._session
                if session is not None and not session.stale(now):
                    return session
                opener = self._opening_until <= now
                if opener:  # bounded: an opener that vanished (cancelled) cannot block others
                    self._opening_until = now + self.options.request_timeout_s
            if opener:
                break
            if now >= deadline:
                raise Unavailable("no session could be opened before the deadline")
            yield Sleep(min(SESSION_WAIT_S, deadline - now))
        try:
            info = yield from self.call(protocol.open_session(self.options.session_ttl_s), deadline)
        except (BadRequest, Forbidden) as exc:
            # A server without sessions (no such route), or a user not allowed to open one:
            # writes go without, and a lost reply is then OutcomeUnknown instead of a retry.
            if isinstance(exc, Forbidden) or exc.code in ("not_found", "method_not_allowed"):
                with self._lock:
                    self._sessions_supported = False
                return None
            raise
        finally:
            with self._lock:
                self._opening_until = -math.inf
        fresh = _Session(info, self._now())
        with self._lock:
            self._sessions_supported = True
            current = self._session
            if current is None or current.stale(self._now()) or current is session:
                self._session = fresh
            return self._session

    def _fetch_token(self, deadline: float) -> Flow[None]:
        """Trade the username and password for a bearer token (token_auth)."""
        assert self.options.token_credentials is not None
        user, password = self.options.token_credentials
        token = yield from self.call(protocol.auth_token(user, password), deadline)
        with self._lock:
            self._token_header = f"Bearer {token}"

    def _begin(self, session: _Session) -> int:
        with self._lock:
            return session.begin(self._now())

    def _end(self, session: _Session, seq: int) -> None:
        with self._lock:
            session.end(seq)

    def _drop_session(self, session: _Session, seq: int) -> None:
        with self._lock:
            session.end(seq)
            if self._session is session:
                self._session = None

    def _headers(
        self, call: Call[Any], session: _Session | None, seq: int
    ) -> tuple[tuple[str, str], ...]:
        headers = call.headers
        auth = self.options.auth_header or self._token_header
        if auth is not None and call.name != "auth_token":
            headers += (("Authorization", auth),)
        if session is not None and seq:
            with self._lock:
                ack = session.ack()
                session.last_used = self._now()
            headers += (
                (protocol.SESSION_HEADER, session.id),
                (protocol.SEQ_HEADER, str(seq)),
                (protocol.ACK_HEADER, str(ack)),
            )
        return headers

    def _give_up(self, call: Call[Any], maybe_delivered: bool, last: str) -> RaftkvError:
        budget = self.options.timeout_s
        if maybe_delivered and call.kind is Kind.WRITE:
            return OutcomeUnknown(
                f"{call.name}: no reply within {budget:g}s; the write may or may not have been"
                f" applied (last: {last})"
            )
        return Unavailable(f"{call.name}: no node answered within {budget:g}s (last: {last})")


def leader_http_address(status: ClusterStatus) -> str | None:
    if status.leader is None:
        return None
    node = status.nodes.get(status.leader)
    return node.http_address if node is not None else None


def _backoff(failures: int) -> float:
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * math.pow(2, min(failures, 10)))
