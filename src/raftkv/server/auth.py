"""Authentication and authorization of API requests (when `auth.enabled`).

Rules:
- Off by default (the seed's localhost walkthrough needs no credentials); `auth.enabled: true`
  on every node turns it on. The users and roles are the replicated state of `kv/auth.py`, read
  from this node's applied state (a change reaches a follower when it applies it).
- Credentials: `Authorization: Basic <base64 name:password>` or `Authorization: Bearer <token>`
  from `POST /auth/token`. A token is `<payload>.<signature>`, base64url; the payload names the
  user, the expiry (unix seconds, `auth.token_ttl_s` after issue) and the first 16 hex digits of
  the user's password hash, so a password change or a deleted user voids its tokens; the
  signature is HMAC-SHA256 with the cluster's signing key (replicated: every node verifies the
  tokens any node issued).
- What a request needs (`required`): /health, /ready, /cluster/local, /cluster/status,
  /metrics and POST /auth/token are open; /kv/<key> needs read (GET) or write (PUT, DELETE)
  on the key; a range (GET or DELETE /kv?prefix= or ?start=&end=) needs it on the whole range,
  i.e. one permission whose prefix covers it; POST /txn needs read on every compared or read
  key and write on every written one; /session, /auth/whoami and PUT
  /auth/users/<self>/password need any valid user; GET /cluster/members and /cluster/config
  are open (metadata nodes read from each other); other /cluster/* operations need root or a
  member's peer certificate; the rest (/compact included) —
  user and role management, /debug/*, and any route not listed here — needs the root role
  (fail closed: a new route is root-only until it is given a rule here).
- 401 `unauthenticated` / `invalid_credentials` / `invalid_token` / `token_expired` carry
  `WWW-Authenticate`; 403 `permission_denied` names the user, the permission it lacks
  (`read`, `write` or `root`) and the key.
- scrypt runs in a worker thread; a verified (user, password) is remembered by a SHA-256 of the
  password salted with the stored hash, so a repeated Basic request costs no scrypt, and a
  password change invalidates the memory. Secrets (passwords, tokens, hashes) are never logged.
- Guessing: after LOCKOUT_FAILURES failed password checks of one user name within
  LOCKOUT_WINDOW_S, this node answers 429 `too_many_attempts` (with Retry-After) for that name
  until the window ends, without running scrypt. Per node and in memory: a guesser spreading
  over the nodes gets one window's worth per node.
- A node that refuses reads (halted, failed after a storage failure, stopping: runtime/halt.py
  `check_readable`) reads no user, role or signing key: `AuthNode.local_get`/`local_items`
  raise, so authenticating a request (Basic or Bearer), issuing a token and every user/role
  listing answer what its KV reads answer, 503 `node_stopping` (or `node_halted`). Refusing is
  the right answer, not a 401: its records may be ahead of or behind what is durable (a
  deleted user or a changed password may show either way), and nothing a request could then
  reach on that node would be served anyway. The open routes (/health, /ready, /cluster/local,
  /cluster/status, /metrics) read no auth record and keep answering: they report the failure.
- Bootstrap: with `RAFTKV_ROOT_PASSWORD` set, the leader creates user `root` with the root role
  if it does not exist; the leader also creates the token-signing key once (`maintain`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

import msgspec
import structlog
from aiohttp import web

from raftkv.kv.auth import (
    ROLE_PREFIX,
    ROOT,
    SALT_BYTES,
    SIGNING_KEY,
    USER_PREFIX,
    RoleRecord,
    SigningKey,
    UserPut,
    UserRecord,
    UserRole,
    allows_range,
    check_password,
    decode_role,
    decode_user,
    hash_password,
    is_root,
    prefix_end,
)
from raftkv.kv.auth import Need as NeedKind
from raftkv.kv.commands import Command, DeleteOp, GetOp, PutOp
from raftkv.server.errors import ApiError, Handler
from raftkv.server.inputs import KV_PREFIX, key_from_request
from raftkv.server.tls import verified_node_ids

log = structlog.get_logger(__name__)

# /metrics is open as in etcd: it carries counts and latencies, never keys, values or users.
OPEN_PATHS: Final = frozenset(
    {"/health", "/ready", "/cluster/local", "/cluster/status", "/metrics"}
)
# Read-only cluster metadata (ids, addresses, the shared config sections: no keys, no secrets)
# that nodes fetch from each other without credentials: a joining node copies /cluster/config,
# a removed node polls it to learn of its removal.
OPEN_GETS: Final = frozenset({"/cluster/members", "/cluster/config"})
_CHALLENGE: Final = {"WWW-Authenticate": 'Basic realm="raftkv", Bearer realm="raftkv"'}
_MEMO_MAX: Final = 4096
LOCKOUT_FAILURES: Final = 10  # failed password checks of one user name ...
LOCKOUT_WINDOW_S: Final = 60.0  # ... within this long: refused (429) until the window ends


@runtime_checkable
class AuthNode(Protocol):
    """What auth needs from the node (RaftKVNode implements it). `local_get`/`local_items`
    raise NodeHalted or NodeStopping once the node refuses reads (module rules)."""

    async def propose_command(self, cmd: Command) -> object: ...

    def local_get(self, key: str) -> str | None: ...

    def local_items(self, prefix: str) -> list[tuple[str, str]]: ...


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    user: UserRecord
    roles: tuple[RoleRecord, ...]

    @property
    def root(self) -> bool:
        return is_root(self.user)


# A typed request key: aiohttp 3.14 warns (NotAppKeyWarning) for a plain string key.
PRINCIPAL: Final = web.RequestKey("raftkv.principal", Principal)


@dataclass(frozen=True, slots=True)
class Need:
    """`need` (read | write) on every key k with start <= k (< end; None: no bound)."""

    need: NeedKind
    start: str
    end: str | None
    key: str | None = None  # set for a single key (named in the 403)


@dataclass(frozen=True, slots=True)
class Rule:
    """What a request needs: nothing ("open"), any user, root, key needs, or a transaction's
    ("txn": the needs come from its body)."""

    kind: str  # open | user | root | keys | txn
    needs: tuple[Need, ...] = ()


def _key_need(key: str, need: NeedKind) -> Need:
    return Need(need, key, key + "\0", key)  # [key, key + NUL) holds exactly `key`


def _prefix_need(prefix: str, need: NeedKind) -> Need:
    return Need(need, prefix, prefix_end(prefix))


class _TokenPayload(msgspec.Struct, frozen=True):
    u: str  # user name
    e: int  # expiry, unix seconds
    g: str  # the first 16 hex digits of the user's password hash


_payload_dec: Final = msgspec.json.Decoder(_TokenPayload)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def required(request: web.Request) -> Rule:
    """The rule for `request` (see the module rules)."""
    path, method, raw = request.path, request.method, request.rel_url.raw_path
    if path in OPEN_PATHS or (path == "/auth/token" and method == "POST"):
        return Rule("open")
    if path in OPEN_GETS and method in ("GET", "HEAD"):
        return Rule("open")
    if raw.startswith(KV_PREFIX) and method in ("GET", "HEAD", "PUT", "DELETE"):
        need: NeedKind = "read" if method in ("GET", "HEAD") else "write"
        return Rule("keys", (_key_need(key_from_request(request), need),))
    if path == "/kv" and method in ("GET", "DELETE"):
        need = "read" if method == "GET" else "write"
        q = request.query
        if (prefix := q.get("prefix")) is not None:
            return Rule("keys", (_prefix_need(prefix, need),))
        return Rule("keys", (Need(need, q.get("start", ""), q.get("end")),))
    if path == "/txn" and method == "POST":
        return Rule("txn")
    if path in ("/auth/whoami", "/session"):
        return Rule("user")
    if method == "PUT" and path.startswith("/auth/users/") and path.endswith("/password"):
        return Rule("user")  # the handler allows root or the user itself
    return Rule("root")


async def txn_needs(request: web.Request, max_value_bytes: int) -> tuple[Need, ...]:
    """Every key a transaction reads (compares, gets) or writes (puts, deletes)."""
    from raftkv.server.txn_routes import parse_txn

    txn = parse_txn(await request.read(), max_value_bytes)
    needs = [_key_need(c.key, "read") for c in txn.compare]
    for op in (*txn.success, *txn.failure):
        match op:
            case GetOp(key=key, prefix=prefix):
                needs.append(_prefix_need(key, "read") if prefix else _key_need(key, "read"))
            case PutOp(key=key):
                needs.append(_key_need(key, "write"))
            case DeleteOp(key=key, prefix=prefix):
                needs.append(_prefix_need(key, "write") if prefix else _key_need(key, "write"))
    return tuple(needs)


class Authenticator:
    """Checks credentials against the replicated users and issues tokens."""

    def __init__(
        self,
        node: AuthNode,
        *,
        token_ttl_s: int,
        max_value_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node = node
        self._ttl_s = token_ttl_s
        self._max_value_bytes = max_value_bytes
        self._clock = clock
        # (user, stored hash) -> sha256(stored hash + password): Basic checks without scrypt.
        self._memo: dict[tuple[str, str], bytes] = {}
        # user name -> (failed password checks, time of the first) in the current window.
        self._failures: dict[str, tuple[int, float]] = {}

    # -- state ------------------------------------------------------------------------------

    def user(self, name: str) -> UserRecord | None:
        try:
            return decode_user(self._node.local_get(USER_PREFIX + name))
        except msgspec.DecodeError:
            log.error("unreadable user record", user=name)
            return None

    def role(self, name: str) -> RoleRecord | None:
        try:
            return decode_role(self._node.local_get(ROLE_PREFIX + name))
        except msgspec.DecodeError:
            log.error("unreadable role record", role=name)
            return None

    def principal(self, name: str, user: UserRecord) -> Principal:
        roles = tuple(r for n in user.roles if (r := self.role(n)) is not None)
        return Principal(name, user, roles)

    def signing_key(self) -> bytes | None:
        key = self._node.local_get(SIGNING_KEY)
        return bytes.fromhex(key) if key else None

    # -- credentials ----------------------------------------------------------------------

    async def check_password(self, name: str, password: str) -> Principal:
        self._check_lockout(name)
        try:
            principal = await self._check_password(name, password)
        except ApiError:
            self._record_failure(name)
            raise
        self._failures.pop(name, None)
        return principal

    def _check_lockout(self, name: str) -> None:
        count, first = self._failures.get(name, (0, 0.0))
        wait = first + LOCKOUT_WINDOW_S - self._clock()
        if count >= LOCKOUT_FAILURES and wait > 0:
            raise ApiError(
                429,
                "too_many_attempts",
                f"too many failed logins for this user; retry in {math.ceil(wait)} s",
                headers={"Retry-After": str(math.ceil(wait))},
            )

    def _record_failure(self, name: str) -> None:
        now = self._clock()
        count, first = self._failures.get(name, (0, now))
        if now - first >= LOCKOUT_WINDOW_S:
            count, first = 0, now
        if len(self._failures) >= _MEMO_MAX:
            self._failures.clear()
        self._failures[name] = (count + 1, first)

    async def _check_password(self, name: str, password: str) -> Principal:
        user = self.user(name)
        if user is None:
            # Same work as for a real user, so timing does not tell which names exist.
            await asyncio.to_thread(hash_password, password, b"\0" * SALT_BYTES)
            raise _invalid_credentials()
        memo_key = (name, user.password.hash)
        fingerprint = hashlib.sha256(user.password.hash.encode() + password.encode()).digest()
        known = self._memo.get(memo_key)
        if known is None:
            if not await asyncio.to_thread(check_password, password, user.password):
                raise _invalid_credentials()
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[memo_key] = fingerprint
        elif not hmac.compare_digest(known, fingerprint):
            raise _invalid_credentials()
        return self.principal(name, user)

    def issue_token(self, principal: Principal) -> tuple[str, int]:
        key = self.signing_key()
        if key is None:
            raise ApiError(
                503,
                "auth_not_ready",
                "the cluster has no token-signing key yet (it is made by the leader); retry",
                headers={"Retry-After": "1"},
            )
        expires = int(self._clock()) + self._ttl_s
        payload = _TokenPayload(principal.name, expires, principal.user.password.hash[:16])
        body = _b64(msgspec.json.encode(payload))
        signature = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
        return f"{body}.{signature}", expires

    def check_token(self, token: str) -> Principal:
        key = self.signing_key()
        body, _, signature = token.partition(".")
        if key is None or not body or not signature:
            raise _invalid_token()
        expected = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, signature):
            raise _invalid_token()
        try:
            payload = _payload_dec.decode(_unb64(body))
        except (msgspec.DecodeError, binascii.Error, ValueError):
            raise _invalid_token() from None
        if payload.e <= self._clock():
            raise ApiError(401, "token_expired", "the token has expired", headers=_CHALLENGE)
        user = self.user(payload.u)
        if user is None or user.password.hash[:16] != payload.g:
            raise _invalid_token()  # user deleted or password changed since
        return self.principal(payload.u, user)

    async def authenticate(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization")
        if not header:
            raise ApiError(
                401, "unauthenticated", "credentials required (Basic or Bearer)", headers=_CHALLENGE
            )
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return self.check_token(value.strip())
        if scheme == "basic":
            name, password = _basic(value.strip())
            return await self.check_password(name, password)
        raise ApiError(
            401, "unauthenticated", "unsupported Authorization scheme", headers=_CHALLENGE
        )

    # -- the middleware --------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        rule = required(request)
        if rule.kind == "open":
            return await handler(request)
        # A member (a peer certificate from the cluster CA) may run cluster operations, e.g. a
        # node joining with a certificate from `certs add-node`.
        member = rule.kind == "root" and request.path.startswith("/cluster/")
        if member and verified_node_ids(request):
            return await handler(request)
        principal = await self.authenticate(request)
        if rule.kind == "txn" and not principal.root:
            rule = Rule("keys", await txn_needs(request, self._max_value_bytes))
        check(principal, rule)
        request[PRINCIPAL] = principal
        return await handler(request)

    # -- leader upkeep -------------------------------------------------------------------------

    async def maintain(
        self, is_leader: Callable[[], bool], root_password: str | None, interval_s: float = 0.2
    ) -> None:
        """Until both exist: the signing key, and (with a root password) user root with the
        root role. Only the leader proposes; the commands are idempotent, so a race between
        two leaders of different terms is harmless (the first key stays)."""
        while True:
            try:
                if is_leader() and not await self._maintain_once(root_password):
                    return
            except Exception as exc:  # not leader any more, timeout: try again later
                log.debug("auth upkeep deferred", error=type(exc).__name__)
            await asyncio.sleep(interval_s)

    async def _maintain_once(self, root_password: str | None) -> bool:
        """One step; False when nothing is left to do."""
        if self.signing_key() is None:
            await self._node.propose_command(SigningKey(secrets.token_hex(32)))
            return True
        if root_password:
            user = self.user(ROOT)
            if user is None:
                hashed = await asyncio.to_thread(
                    hash_password, root_password, secrets.token_bytes(SALT_BYTES)
                )
                await self._node.propose_command(UserPut(ROOT, hashed, create_only=True, root=True))
                return True
            if ROOT not in user.roles:
                await self._node.propose_command(UserRole(ROOT, ROOT, grant=True))
                return True
        return False


def check(principal: Principal, rule: Rule) -> None:
    """Raise 403 unless `principal` satisfies `rule`."""
    if principal.root or rule.kind == "user":
        return
    if rule.kind == "keys":
        for need in rule.needs:
            if not allows_range(principal.roles, need.start, need.end, need.need):
                words = f"user {principal.name!r} lacks {need.need} permission on this "
                if need.key is not None:
                    raise ApiError(
                        403,
                        "permission_denied",
                        words + "key",
                        user=principal.name,
                        permission=need.need,
                        key=need.key,
                    )
                raise ApiError(
                    403,
                    "permission_denied",
                    words + "range",
                    user=principal.name,
                    permission=need.need,
                    range_start=need.start,
                    range_end=need.end,
                )
        return
    raise ApiError(
        403,
        "permission_denied",
        f"user {principal.name!r} lacks the root role this request needs",
        user=principal.name,
        permission="root",
    )


def principal_of(request: web.Request) -> Principal | None:
    """The authenticated user of `request` (None when auth is off or the route is open)."""
    value = request.get(PRINCIPAL)
    return value if isinstance(value, Principal) else None


def _basic(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ApiError(
            401, "unauthenticated", "malformed Basic credentials", headers=_CHALLENGE
        ) from None
    name, sep, password = decoded.partition(":")
    if not sep or not name:
        raise ApiError(401, "unauthenticated", "malformed Basic credentials", headers=_CHALLENGE)
    return name, password


def _invalid_credentials() -> ApiError:
    return ApiError(401, "invalid_credentials", "wrong user name or password", headers=_CHALLENGE)


def _invalid_token() -> ApiError:
    return ApiError(401, "invalid_token", "the token is not valid", headers=_CHALLENGE)
