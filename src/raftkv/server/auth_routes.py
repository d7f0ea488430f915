"""HTTP endpoints for tokens, users and roles (etcd's auth API, REST-shaped).

Routes (root only unless said; the auth middleware checks, see auth.py):
    POST   /auth/token                      {"name", "password"} or Basic -> {"token", ...}  open
    GET    /auth/whoami                     -> {"user", "roles"}                      any user
    POST   /auth/users                      {"name", "password", "roles"?} -> 201
    GET    /auth/users, /auth/users/{name}
    DELETE /auth/users/{name}
    PUT    /auth/users/{name}/password      {"password"}                  root or the user
    PUT    /auth/users/{name}/roles/{role}  grant;  DELETE: revoke
    POST   /auth/roles                      {"name"} -> 201
    GET    /auth/roles, /auth/roles/{name}
    DELETE /auth/roles/{name}
    PUT    /auth/roles/{name}/permissions   {"prefix", "permission": read|write|readwrite}
    DELETE /auth/roles/{name}/permissions?prefix=

Rules:
- The routes work whether or not auth is enabled, so users can be prepared before the switch is
  turned on (with auth off, nothing is checked: anyone may call them, as anyone may write).
- Changes are commands proposed through Raft (`kv/auth.py`); on a follower they are forwarded to
  the leader like any write. Reads are this node's applied state, refused like any read once
  the node refuses reads (halted, failed, stopping: 503 `node_stopping` / `node_halted`, as
  its KV reads; auth.py rules), authentication and `POST /auth/token` included.
- A failed command maps to 404 (`user_not_found`, `role_not_found`), 409 (`user_exists`,
  `role_exists`, `role_not_granted`) or 400 (`root_role`, `invalid_permission`).
- Passwords are hashed (scrypt, in a worker thread) by the node that receives the request; the
  password itself never enters the log, a reply or a log line.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import msgspec
from aiohttp import web

from raftkv.kv.auth import (
    PERMISSIONS,
    ROLE_PREFIX,
    ROOT,
    SALT_BYTES,
    USER_PREFIX,
    AuthResult,
    PasswordHash,
    RoleDelete,
    RolePermission,
    RolePut,
    UserDelete,
    UserPut,
    UserRole,
    decode_role,
    decode_user,
    hash_password,
)
from raftkv.kv.commands import Command
from raftkv.server.auth import Authenticator, AuthNode, principal_of
from raftkv.server.errors import ApiError, json_response
from raftkv.server.inputs import MAX_KEY_BYTES

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,62}")
MAX_PASSWORD_CHARS: Final = 1024
_STATUS: Final = {
    "user_not_found": 404,
    "role_not_found": 404,
    "user_exists": 409,
    "role_exists": 409,
    "role_not_granted": 409,
}

Propose = Callable[[web.Request, Command], Awaitable[object]]


class Forwarded(Exception):
    """The write went to the leader; `response` is its reply, to return as is."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("forwarded")
        self.response = response


class _Login(msgspec.Struct):
    name: str
    password: str


class _NewUser(msgspec.Struct):
    name: str
    password: str
    roles: list[str] = []


class _Password(msgspec.Struct):
    password: str


class _NewRole(msgspec.Struct):
    name: str


class _Grant(msgspec.Struct):
    prefix: str
    permission: str


def add_auth_routes(
    app: web.Application, node: object, auth: Authenticator, propose: Propose
) -> None:
    routes = _AuthRoutes(node if isinstance(node, AuthNode) else None, auth, propose)
    table = (
        ("POST", "/auth/token", routes.token),
        ("GET", "/auth/whoami", routes.whoami),
        ("POST", "/auth/users", routes.add_user),
        ("GET", "/auth/users", routes.list_users),
        ("GET", "/auth/users/{name}", routes.get_user),
        ("DELETE", "/auth/users/{name}", routes.delete_user),
        ("PUT", "/auth/users/{name}/password", routes.set_password),
        ("PUT", "/auth/users/{name}/roles/{role}", routes.grant_role),
        ("DELETE", "/auth/users/{name}/roles/{role}", routes.revoke_role),
        ("POST", "/auth/roles", routes.add_role),
        ("GET", "/auth/roles", routes.list_roles),
        ("GET", "/auth/roles/{name}", routes.get_role),
        ("DELETE", "/auth/roles/{name}", routes.delete_role),
        ("PUT", "/auth/roles/{name}/permissions", routes.grant_permission),
        ("DELETE", "/auth/roles/{name}/permissions", routes.revoke_permission),
    )
    for method, path, handler in table:
        app.router.add_route(method, path, _forwarding(handler))


def _forwarding(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Forwarded as fwd:
            return fwd.response

    return run


def _name(value: str, what: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ApiError(
            400,
            f"invalid_{what}_name",
            f"{what} name must be letters, digits, '.', '_', '@' or '-' (at most 63)",
        )
    return value


def _password(value: str) -> str:
    if not value or len(value) > MAX_PASSWORD_CHARS:
        raise ApiError(
            400, "invalid_password", f"password must be 1 to {MAX_PASSWORD_CHARS} characters"
        )
    return value


T = TypeVar("T")


async def _body(request: web.Request, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(await request.read(), type=kind)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_body", f"invalid request body: {exc}") from exc
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", "request body is not valid JSON") from exc


def _outcome(result: object) -> None:
    if not isinstance(result, AuthResult):
        raise ApiError(500, "internal_error", "unexpected apply result")
    if not result.ok:
        raise ApiError(_STATUS.get(result.code, 400), result.code, result.message)


class _AuthRoutes:
    def __init__(self, node: AuthNode | None, auth: Authenticator, propose: Propose) -> None:
        self._node = node
        self._auth = auth
        self._propose = propose

    def _need_node(self) -> AuthNode:
        if self._node is None:
            raise ApiError(501, "not_supported", "this node does not support auth")
        return self._node

    async def _run(self, request: web.Request, cmd: Command) -> None:
        self._need_node()
        _outcome(await self._propose(request, cmd))

    async def _hash(self, password: str) -> PasswordHash:
        return await asyncio.to_thread(hash_password, password, secrets.token_bytes(SALT_BYTES))

    # -- tokens ------------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.StreamResponse:
        self._need_node()
        if request.headers.get("Authorization"):
            principal = await self._auth.authenticate(request)
        else:
            login = await _body(request, _Login)
            principal = await self._auth.check_password(login.name, login.password)
        token, expires = self._auth.issue_token(principal)
        return json_response(
            {"token": token, "user": principal.name, "expires_at": expires, "type": "Bearer"}
        )

    async def whoami(self, request: web.Request) -> web.StreamResponse:
        principal = principal_of(request)
        if principal is None:
            return json_response({"user": None, "roles": [], "auth_enabled": False})
        return json_response(
            {"user": principal.name, "roles": list(principal.user.roles), "auth_enabled": True}
        )

    # -- users -------------------------------------------------------------------------------

    async def add_user(self, request: web.Request) -> web.StreamResponse:
        new = await _body(request, _NewUser)
        name = _name(new.name, "user")
        roles = [_name(r, "role") for r in new.roles]
        hashed = await self._hash(_password(new.password))
        await self._run(request, UserPut(name, hashed, create_only=True))
        for role in roles:
            await self._run(request, UserRole(name, role, grant=True))
        return json_response(
            {"user": name, "roles": sorted(roles), "message": "user added"}, status=201
        )

    async def list_users(self, request: web.Request) -> web.StreamResponse:
        node = self._need_node()
        users = []
        for key, value in node.local_items(USER_PREFIX):
            user = decode_user(value)
            assert user is not None
            users.append({"name": key[len(USER_PREFIX) :], "roles": list(user.roles)})
        return json_response({"users": users})

    async def get_user(self, request: web.Request) -> web.StreamResponse:
        self._need_node()
        name = request.match_info["name"]
        user = self._auth.user(name)
        if user is None:
            raise ApiError(404, "user_not_found", f"no user {name!r}", user=name)
        return json_response({"name": name, "roles": list(user.roles)})

    async def delete_user(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        await self._run(request, UserDelete(name))
        return json_response({"user": name, "message": "user deleted"})

    async def set_password(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        principal = principal_of(request)
        if principal is not None and not principal.root and principal.name != name:
            raise ApiError(
                403,
                "permission_denied",
                "only root or the user itself may change a password",
                user=principal.name,
                permission="root",
            )
        body = await _body(request, _Password)
        if self._auth.user(name) is None:
            raise ApiError(404, "user_not_found", f"no user {name!r}", user=name)
        hashed = await self._hash(_password(body.password))
        await self._run(request, UserPut(name, hashed, create_only=False))
        return json_response({"user": name, "message": "password changed"})

    async def grant_role(self, request: web.Request) -> web.StreamResponse:
        name, role = request.match_info["name"], request.match_info["role"]
        await self._run(request, UserRole(name, role, grant=True))
        return json_response({"user": name, "role": role, "message": "role granted"})

    async def revoke_role(self, request: web.Request) -> web.StreamResponse:
        name, role = request.match_info["name"], request.match_info["role"]
        await self._run(request, UserRole(name, role, grant=False))
        return json_response({"user": name, "role": role, "message": "role revoked"})

    # -- roles -------------------------------------------------------------------------------

    async def add_role(self, request: web.Request) -> web.StreamResponse:
        name = _name((await _body(request, _NewRole)).name, "role")
        if name == ROOT:
            raise ApiError(400, "root_role", "the root role is built in")
        await self._run(request, RolePut(name))
        return json_response({"role": name, "message": "role added"}, status=201)

    async def list_roles(self, request: web.Request) -> web.StreamResponse:
        node = self._need_node()
        names = [key[len(ROLE_PREFIX) :] for key, _ in node.local_items(ROLE_PREFIX)]
        return json_response({"roles": sorted({*names, ROOT})})

    async def get_role(self, request: web.Request) -> web.StreamResponse:
        node = self._need_node()
        name = request.match_info["name"]
        role = decode_role(node.local_get(ROLE_PREFIX + name))
        if role is None and name != ROOT:
            raise ApiError(404, "role_not_found", f"no role {name!r}", role=name)
        perms = [] if role is None else role.permissions
        return json_response(
            {
                "name": name,
                "permissions": [{"prefix": p.prefix, "permission": p.permission} for p in perms],
                "users": [] if role is None else list(role.users),
                "all_permissions": name == ROOT,
            }
        )

    async def delete_role(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        await self._run(request, RoleDelete(name))
        return json_response({"role": name, "message": "role deleted"})

    async def grant_permission(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        grant = await _body(request, _Grant)
        if grant.permission not in PERMISSIONS:
            raise ApiError(
                400,
                "invalid_permission",
                f"permission must be one of {', '.join(PERMISSIONS)}",
                permission=grant.permission,
            )
        _check_prefix(grant.prefix)
        await self._run(request, RolePermission(name, grant.prefix, grant.permission))
        return json_response({"role": name, "prefix": grant.prefix, "permission": grant.permission})

    async def revoke_permission(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        prefix = request.query.get("prefix")
        if prefix is None:
            raise ApiError(400, "invalid_parameter", "prefix is required", parameter="prefix")
        _check_prefix(prefix)
        await self._run(request, RolePermission(name, prefix, ""))
        return json_response({"role": name, "prefix": prefix, "message": "permission revoked"})


def _check_prefix(prefix: str) -> None:
    if len(prefix.encode()) > MAX_KEY_BYTES:
        raise ApiError(400, "invalid_prefix", f"prefix longer than {MAX_KEY_BYTES} bytes")
