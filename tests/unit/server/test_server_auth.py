"""Authentication and authorization over HTTP (server/auth.py, auth_routes.py).

Each permission boundary, tokens (expiry, tampering, voided by a password change), root-only
management and debug endpoints, 401/403 JSON naming what is missing.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from raftkv.kv.commands import Command
from tests.unit.server.fakes import Client, FakeNode, aio, client_for, make_settings

DEADLINE_S = 10.0


class AuthFakeNode(FakeNode):
    """A FakeNode whose auth commands apply to its state's auth records, as the real node's."""

    async def propose_command(self, cmd: Command) -> object:
        return await self.write(cmd)

    def local_get(self, key: str) -> str | None:
        return self.state.auth_get(key)

    def local_items(self, prefix: str) -> list[tuple[str, str]]:
        return self.state.auth_items(prefix)


def basic(name: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ROOT = basic("root", "rootpw")


@asynccontextmanager
async def auth_client(tmp_path: Path, node: AuthFakeNode, **kw: Any) -> AsyncIterator[Client]:
    settings = make_settings(tmp_path, auth_enabled=True, root_password="rootpw", **kw)
    async with client_for(node, settings) as client:
        async with asyncio.timeout(DEADLINE_S):  # the leader bootstraps root and the key
            while (await client.get("/auth/whoami", headers=ROOT)).status != 200:
                await asyncio.sleep(0.02)
        yield client


async def status_code(resp: Any) -> tuple[int, str | None]:
    body = await resp.json()
    return resp.status, body.get("code")


@aio
async def test_permission_boundaries(tmp_path: Path) -> None:
    node = AuthFakeNode()
    async with auth_client(tmp_path, node) as c:
        resp = await c.put("/kv/x", data=b"v")
        assert await status_code(resp) == (401, "unauthenticated")
        assert "Basic" in resp.headers["WWW-Authenticate"]
        resp = await c.put("/kv/x", data=b"v", headers=basic("root", "nope"))
        assert await status_code(resp) == (401, "invalid_credentials")
        assert (await c.put("/kv/x", data=b"v", headers=ROOT)).status == 200

        assert (await c.post("/auth/roles", json={"name": "app"}, headers=ROOT)).status == 201
        for prefix, perm in (("app/", "readwrite"), ("shared/", "read"), ("inbox/", "write")):
            resp = await c.put(
                "/auth/roles/app/permissions",
                json={"prefix": prefix, "permission": perm},
                headers=ROOT,
            )
            assert resp.status == 200
        resp = await c.post(
            "/auth/users", json={"name": "alice", "password": "pw", "roles": ["app"]}, headers=ROOT
        )
        assert resp.status == 201
        alice = basic("alice", "pw")

        assert (await c.put("/kv/app/1", data=b"a", headers=alice)).status == 200
        assert (await c.get("/kv/app/1", headers=alice)).status == 200
        assert (await c.get("/kv/shared/x", headers=alice)).status == 404  # allowed, absent
        assert (await c.put("/kv/inbox/m", data=b"m", headers=alice)).status == 200
        resp = await c.put("/kv/shared/x", data=b"v", headers=alice)
        assert resp.status == 403
        assert await resp.json() == {
            "error": "user 'alice' lacks write permission on this key",
            "code": "permission_denied",
            "user": "alice",
            "permission": "write",
            "key": "shared/x",
        }
        resp = await c.get("/kv/inbox/m", headers=alice)
        assert (await resp.json())["permission"] == "read"
        assert (await c.delete("/kv/x", headers=alice)).status == 403
        for method, path in (
            ("GET", "/auth/users"),
            ("POST", "/auth/roles"),
            ("GET", "/debug/keys"),
            ("GET", "/debug/log"),
            ("PUT", "/auth/users/root/password"),
        ):
            resp = await c.request(method, path, headers=alice, json={"password": "x"})
            assert await status_code(resp) == (403, "permission_denied"), path
            assert (await resp.json())["permission"] == "root"
        # Ranges need a permission covering the whole range.
        assert (await c.get("/kv?prefix=app/", headers=alice)).status == 200
        assert (await c.get("/kv?prefix=app/sub", headers=alice)).status == 200
        assert (await c.get("/kv?start=app/a&end=app/z", headers=alice)).status == 200
        for query in ("prefix=ap", "prefix=", "start=app/a", "start=app/&end=b"):
            resp = await c.get(f"/kv?{query}", headers=alice)
            body = await resp.json()
            assert (resp.status, body["code"], body["permission"]) == (
                403,
                "permission_denied",
                "read",
            ), query
        resp = await c.delete("/kv?prefix=shared/", headers=alice)
        assert (await resp.json())["permission"] == "write"
        # A transaction needs read on what it compares or reads, write on what it writes.
        txn = {
            "compare": [{"key": "shared/x", "target": "version", "op": "==", "value": 0}],
            "success": [{"op": "put", "key": "app/2", "value": "t"}],
            "failure": [{"op": "get", "key": "app/", "prefix": True}],
        }
        assert (await c.post("/txn", json=txn, headers=alice)).status == 200
        for bad in (
            {"success": [{"op": "put", "key": "shared/y", "value": "t"}]},
            {"failure": [{"op": "delete", "key": "app", "prefix": True}]},
            {"compare": [{"key": "other", "target": "version", "op": "==", "value": 0}]},
        ):
            resp = await c.post("/txn", json=bad, headers=alice)
            assert await status_code(resp) == (403, "permission_denied"), bad
        assert (await c.post("/compact", json={"revision": 1}, headers=alice)).status == 403
        # Open routes stay open.
        for path in ("/health", "/ready", "/cluster/local"):
            assert (await c.get(path)).status == 200
        # Revoking the role takes effect at once.
        resp = await c.delete("/auth/users/alice/roles/app", headers=ROOT)
        assert resp.status == 200
        assert (await c.get("/kv/app/1", headers=alice)).status == 403
        # Auth records are not keys: nothing of them shows in the key space.
        assert not any("root" in str(v) or "alice" in k for k, v in node.data.items())
    assert "alice" not in str(node.data)


@aio
async def test_tokens_expire_and_die_with_a_password_change(tmp_path: Path) -> None:
    node = AuthFakeNode()
    async with auth_client(tmp_path, node, token_ttl_s=1) as c:
        resp = await c.post("/auth/users", json={"name": "bob", "password": "pw1"}, headers=ROOT)
        assert resp.status == 201
        resp = await c.post("/auth/token", json={"name": "bob", "password": "pw1"})
        assert resp.status == 200
        token = (await resp.json())["token"]
        who = await c.get("/auth/whoami", headers=bearer(token))
        assert (await who.json())["user"] == "bob"
        resp = await c.post("/auth/token", json={"name": "bob", "password": "bad"})
        assert await status_code(resp) == (401, "invalid_credentials")
        tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        resp = await c.get("/auth/whoami", headers=bearer(tampered))
        assert await status_code(resp) == (401, "invalid_token")
        async with asyncio.timeout(DEADLINE_S):  # the 1 s lifetime runs out
            while (resp := await c.get("/auth/whoami", headers=bearer(token))).status == 200:
                await asyncio.sleep(0.1)
        assert await status_code(resp) == (401, "token_expired")

    async with auth_client(tmp_path, node) as c:  # default lifetime
        token = (await (await c.post("/auth/token", headers=basic("bob", "pw1"))).json())["token"]
        assert (await c.get("/auth/whoami", headers=bearer(token))).status == 200
        resp = await c.put(
            "/auth/users/bob/password", json={"password": "pw2"}, headers=bearer(token)
        )
        assert resp.status == 200
        resp = await c.get("/auth/whoami", headers=bearer(token))
        assert await status_code(resp) == (401, "invalid_token")
        assert (await c.get("/auth/whoami", headers=basic("bob", "pw1"))).status == 401
        assert (await c.get("/auth/whoami", headers=basic("bob", "pw2"))).status == 200
        # A deleted user's credentials die with it.
        assert (await c.delete("/auth/users/bob", headers=ROOT)).status == 200
        resp = await c.get("/auth/whoami", headers=basic("bob", "pw2"))
        assert await status_code(resp) == (401, "invalid_credentials")


@aio
async def test_management_errors_are_json(tmp_path: Path) -> None:
    async with auth_client(tmp_path, AuthFakeNode()) as c:
        cases = (
            ("POST", "/auth/users", {"name": "root", "password": "x"}, 409, "user_exists"),
            ("POST", "/auth/users", {"name": "a b", "password": "x"}, 400, "invalid_user_name"),
            ("POST", "/auth/users", {"name": "ok", "password": ""}, 400, "invalid_password"),
            ("POST", "/auth/users", {"name": "ok"}, 400, "invalid_body"),
            ("DELETE", "/auth/users/ghost", None, 404, "user_not_found"),
            ("DELETE", "/auth/roles/root", None, 400, "root_role"),
            ("PUT", "/auth/users/root/roles/ghost", None, 404, "role_not_found"),
            ("POST", "/auth/roles", {"name": "root"}, 400, "root_role"),
        )
        for method, path, body, status, code in cases:
            resp = await c.request(method, path, json=body, headers=ROOT)
            assert await status_code(resp) == (status, code), (method, path)
        listing = await (await c.get("/auth/users", headers=ROOT)).json()
        assert listing == {"users": [{"name": "root", "roles": ["root"]}]}
        assert "hash" not in str(await (await c.get("/auth/users/root", headers=ROOT)).json())


@aio
async def test_auth_off_checks_nothing(tmp_path: Path) -> None:
    node = AuthFakeNode()
    async with client_for(node, make_settings(tmp_path)) as c:
        assert (await c.put("/kv/x", data=b"v")).status == 200
        assert (await c.get("/debug/keys")).status == 501  # no inspector on the fake, but open
        resp = await c.post("/auth/users", json={"name": "prep", "password": "pw"})
        assert resp.status == 201  # users may be prepared before the switch is turned on
        assert (await (await c.get("/auth/whoami")).json())["auth_enabled"] is False


@aio
async def test_password_guessing_is_locked_out_per_user() -> None:
    from raftkv.kv.auth import UserPut, hash_password
    from raftkv.server.auth import LOCKOUT_FAILURES, LOCKOUT_WINDOW_S, Authenticator
    from raftkv.server.errors import ApiError

    node = AuthFakeNode()
    await node.propose_command(UserPut("dave", hash_password("right", b"s" * 16)))
    now = [1000.0]
    auth = Authenticator(node, token_ttl_s=60, max_value_bytes=1024, clock=lambda: now[0])

    async def code(name: str, password: str) -> str | None:
        try:
            await auth.check_password(name, password)
        except ApiError as exc:
            return exc.code
        return None

    for _ in range(LOCKOUT_FAILURES):
        assert await code("dave", "wrong") == "invalid_credentials"
    assert await code("dave", "right") == "too_many_attempts"  # even the right one, for now
    assert await code("erin", "x") == "invalid_credentials"  # other names are not affected
    now[0] += LOCKOUT_WINDOW_S
    assert await code("dave", "right") is None
    assert await code("dave", "wrong") == "invalid_credentials"  # the count started over
