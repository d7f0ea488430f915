"""Users, roles and permissions: the replicated auth state and its commands (pure).

Rules:
- Auth state is replicated (every node applies the same commands) but lives OUTSIDE the key
  space: the store's auth records (`MVCCStore.auth_get/put/delete/items`; LMDB: the `sess`
  database, prefix b"a"), named "user/<name>", "role/<name>" and "signing_key". No key range,
  transaction, watch or revision ever sees them; snapshots carry them (storage/mvcc_image.py).
- Records are msgspec JSON text. A user holds its scrypt password hash and role names; a role
  holds its permissions and its members (kept both ways, so deleting a role or a user leaves no
  dangling grant: a role recreated later grants nothing to its former members).
- A permission is (key prefix, read | write | readwrite); the empty prefix is every key. The
  `root` role is built in: it holds every permission and is needed for cluster operations and
  user/role management; it cannot be deleted, nor given prefix permissions.
- Commands are deterministic: the password hash (with its salt) and the signing key are made by
  the node that proposes the command (randomness is injected there), never at apply time.
  A command that cannot apply (unknown user, duplicate...) changes nothing and returns
  `AuthResult(ok=False, code=...)`.
- Passwords: `hashlib.scrypt` (memory-hard), n=2**14, r=8, p=1, 16-byte salt, 32-byte hash;
  the parameters travel with the hash, so they can be raised later without breaking old users.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Final, Literal, Protocol

import msgspec

from raftkv.kv.registry import COMMAND_SET_VERSION, CommandBase, command_kind

USER_PREFIX: Final = "user/"
ROLE_PREFIX: Final = "role/"
SIGNING_KEY: Final = "signing_key"
ROOT: Final = "root"
PERMISSIONS: Final = ("read", "write", "readwrite")
SCRYPT_N: Final = 1 << 14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
SALT_BYTES: Final = 16

Need = Literal["read", "write"]


class PasswordHash(msgspec.Struct, frozen=True):
    salt: str  # hex
    hash: str  # hex
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P


class UserRecord(msgspec.Struct, frozen=True):
    password: PasswordHash
    roles: tuple[str, ...] = ()  # sorted


class Permission(msgspec.Struct, frozen=True):
    prefix: str
    permission: str  # one of PERMISSIONS


class RoleRecord(msgspec.Struct, frozen=True):
    permissions: tuple[Permission, ...] = ()  # sorted by prefix, one per prefix
    users: tuple[str, ...] = ()  # sorted


# -- commands (tags 16-23 are the auth block, kv/commands.py) -----------------------------------


@command_kind("auth_user_put", since=COMMAND_SET_VERSION)
class UserPut(CommandBase, frozen=True, tag=16):
    """Create user `name` or change its password. `create_only`: fail if it exists. `root`:
    also grant it the root role, in the same step (the bootstrap root user is never seen
    without its role)."""

    name: str
    password: PasswordHash
    create_only: bool = True
    root: bool = False


@command_kind("auth_user_delete", since=COMMAND_SET_VERSION)
class UserDelete(CommandBase, frozen=True, tag=17):
    name: str


@command_kind("auth_user_role", since=COMMAND_SET_VERSION)
class UserRole(CommandBase, frozen=True, tag=18):
    """Grant (`grant`) or revoke role `role` to/from user `name`."""

    name: str
    role: str
    grant: bool


@command_kind("auth_role_put", since=COMMAND_SET_VERSION)
class RolePut(CommandBase, frozen=True, tag=19):
    name: str


@command_kind("auth_role_delete", since=COMMAND_SET_VERSION)
class RoleDelete(CommandBase, frozen=True, tag=20):
    name: str


@command_kind("auth_role_permission", since=COMMAND_SET_VERSION)
class RolePermission(CommandBase, frozen=True, tag=21):
    """Set role `name`'s permission on `prefix`; an empty `permission` revokes it."""

    name: str
    prefix: str
    permission: str


@command_kind("auth_signing_key", since=COMMAND_SET_VERSION)
class SigningKey(CommandBase, frozen=True, tag=22):
    """The cluster's token-signing key (hex); the first one committed stays."""

    key: str


AuthCommand = UserPut | UserDelete | UserRole | RolePut | RoleDelete | RolePermission | SigningKey


class AuthResult(msgspec.Struct, frozen=True, array_like=True, gc=False, tag=16):
    """The outcome of an auth command (tag 16 in the Result union of kv/commands.py)."""

    ok: bool
    code: str = ""  # stable snake_case when not ok
    message: str = ""


class AuthBatch(Protocol):
    """What applying an auth command needs: the auth records of one atomic batch."""

    def get(self, key: str) -> str | None: ...

    def put(self, key: str, value: str) -> None: ...

    def delete(self, key: str) -> bool: ...


_user_dec: Final = msgspec.json.Decoder(UserRecord)
_role_dec: Final = msgspec.json.Decoder(RoleRecord)


def decode_user(text: str | None) -> UserRecord | None:
    return None if text is None else _user_dec.decode(text)


def decode_role(text: str | None) -> RoleRecord | None:
    return None if text is None else _role_dec.decode(text)


def _encode(record: msgspec.Struct) -> str:
    return msgspec.json.encode(record).decode()


def _fail(code: str, message: str) -> AuthResult:
    return AuthResult(False, code, message)


_OK: Final = AuthResult(True)


def _sorted_add(items: tuple[str, ...], item: str) -> tuple[str, ...]:
    return tuple(sorted({*items, item}))


def _without(items: tuple[str, ...], item: str) -> tuple[str, ...]:
    return tuple(i for i in items if i != item)


def apply_auth(batch: AuthBatch, cmd: AuthCommand) -> AuthResult:
    """Apply one auth command (see the module rules)."""
    match cmd:
        case UserPut(name=name, password=password, create_only=create_only, root=root):
            old = decode_user(batch.get(USER_PREFIX + name))
            if old is not None and create_only:
                return _fail("user_exists", f"user {name!r} already exists")
            roles = old.roles if old is not None else ()
            batch.put(USER_PREFIX + name, _encode(UserRecord(password, roles)))
            if root and ROOT not in roles:
                return _user_role(batch, name, ROOT, grant=True)
            return _OK
        case UserDelete(name=name):
            user = decode_user(batch.get(USER_PREFIX + name))
            if user is None:
                return _fail("user_not_found", f"no user {name!r}")
            for role_name in user.roles:
                role = decode_role(batch.get(ROLE_PREFIX + role_name))
                if role is not None:
                    new = RoleRecord(role.permissions, _without(role.users, name))
                    batch.put(ROLE_PREFIX + role_name, _encode(new))
            batch.delete(USER_PREFIX + name)
            return _OK
        case UserRole(name=name, role=role_name, grant=grant):
            return _user_role(batch, name, role_name, grant=grant)
        case RolePut(name=name):
            if batch.get(ROLE_PREFIX + name) is not None:
                return _fail("role_exists", f"role {name!r} already exists")
            batch.put(ROLE_PREFIX + name, _encode(RoleRecord()))
            return _OK
        case RoleDelete(name=name):
            if name == ROOT:
                return _fail("root_role", "the root role cannot be deleted")
            role = decode_role(batch.get(ROLE_PREFIX + name))
            if role is None:
                return _fail("role_not_found", f"no role {name!r}")
            for user_name in role.users:
                user = decode_user(batch.get(USER_PREFIX + user_name))
                if user is not None:
                    new_user = UserRecord(user.password, _without(user.roles, name))
                    batch.put(USER_PREFIX + user_name, _encode(new_user))
            batch.delete(ROLE_PREFIX + name)
            return _OK
        case RolePermission(name=name, prefix=prefix, permission=permission):
            if name == ROOT:
                return _fail("root_role", "the root role holds every permission already")
            if permission and permission not in PERMISSIONS:
                return _fail("invalid_permission", f"permission must be one of {PERMISSIONS}")
            role = decode_role(batch.get(ROLE_PREFIX + name))
            if role is None:
                return _fail("role_not_found", f"no role {name!r}")
            perms = {p.prefix: p for p in role.permissions if p.prefix != prefix}
            if permission:
                perms[prefix] = Permission(prefix, permission)
            new_role = RoleRecord(tuple(perms[p] for p in sorted(perms)), role.users)
            batch.put(ROLE_PREFIX + name, _encode(new_role))
            return _OK
        case SigningKey(key=key):
            if batch.get(SIGNING_KEY) is None:
                batch.put(SIGNING_KEY, key)
            return _OK
    raise TypeError(f"unknown auth command {type(cmd).__name__}")


def _user_role(batch: AuthBatch, name: str, role_name: str, *, grant: bool) -> AuthResult:
    user = decode_user(batch.get(USER_PREFIX + name))
    if user is None:
        return _fail("user_not_found", f"no user {name!r}")
    role = decode_role(batch.get(ROLE_PREFIX + role_name))
    if role is None:
        if role_name != ROOT or not grant:
            return _fail("role_not_found", f"no role {role_name!r}")
        role = RoleRecord()  # the built-in root role gets its record on first grant
    if grant:
        user = UserRecord(user.password, _sorted_add(user.roles, role_name))
        role = RoleRecord(role.permissions, _sorted_add(role.users, name))
    else:
        if role_name not in user.roles:
            return _fail("role_not_granted", f"user {name!r} does not have role {role_name!r}")
        user = UserRecord(user.password, _without(user.roles, role_name))
        role = RoleRecord(role.permissions, _without(role.users, name))
    batch.put(USER_PREFIX + name, _encode(user))
    batch.put(ROLE_PREFIX + role_name, _encode(role))
    return _OK


# -- checks (pure) ------------------------------------------------------------------------------


def hash_password(password: str, salt: bytes) -> PasswordHash:
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return PasswordHash(salt.hex(), digest.hex())


def check_password(password: str, stored: PasswordHash) -> bool:
    try:
        digest = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(stored.salt),
            n=stored.n,
            r=stored.r,
            p=stored.p,
            dklen=len(stored.hash) // 2,
            maxmem=128 * stored.r * (stored.n + stored.p + 2) + 1024 * 1024,
        )
    except (ValueError, MemoryError):  # a record with parameters this host cannot use
        return False
    return hmac.compare_digest(digest.hex(), stored.hash)


def is_root(user: UserRecord) -> bool:
    return ROOT in user.roles


def allows(roles: Iterable[RoleRecord], key: str, need: Need) -> bool:
    """Whether any of `roles` grants `need` on `key`."""
    return any(
        key.startswith(p.prefix) and need in p.permission
        for role in roles
        for p in role.permissions
    )


def prefix_end(prefix: str) -> str | None:
    """The least string above every string starting with `prefix` (None: no bound)."""
    stem = prefix.rstrip("\U0010ffff")
    return stem[:-1] + chr(ord(stem[-1]) + 1) if stem else None


def allows_range(roles: Iterable[RoleRecord], start: str, end: str | None, need: Need) -> bool:
    """Whether `need` is granted on every key k with start <= k (< end, unless None): one
    permission's prefix covers the whole range. A prefix P is the range [P, prefix_end(P))."""
    for role in roles:
        for p in role.permissions:
            if need not in p.permission or not start.startswith(p.prefix):
                continue
            bound = prefix_end(p.prefix)
            if bound is None or (end is not None and end <= bound):
                return True
    return False


def user_roles(user: UserRecord, roles: Mapping[str, RoleRecord | None]) -> list[RoleRecord]:
    return [r for name in user.roles if (r := roles.get(name)) is not None]
