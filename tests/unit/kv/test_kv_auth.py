"""The replicated auth state (kv/auth.py): commands, permission checks, snapshots carry it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raftkv.codec.commands import decode_command, encode_command
from raftkv.kv.auth import (
    ROLE_PREFIX,
    ROOT,
    SIGNING_KEY,
    USER_PREFIX,
    AuthResult,
    RoleDelete,
    RolePermission,
    RolePut,
    SigningKey,
    UserDelete,
    UserPut,
    UserRole,
    allows,
    check_password,
    decode_role,
    decode_user,
    hash_password,
)
from raftkv.kv.machine import apply_command as apply_at
from raftkv.kv.mvcc import DictState
from raftkv.raft.types import Entry, Index, Term
from raftkv.storage.mvcc_image import dict_image, load_image
from raftkv.storage.state_lmdb import LmdbState

PW = hash_password("s3cret", b"0123456789abcdef")


class _Records:
    """The auth records of a DictState, seen as the AuthBatch the assertions read."""

    def __init__(self, state: DictState) -> None:
        self.state = state

    def get(self, key: str) -> str | None:
        return self.state.auth_get(key)


def apply_command(st: _Records, cmd: object) -> Any:
    result = apply_at(st.state, cmd, 7)  # type: ignore[arg-type]
    assert st.state.revision() == 0  # auth commands are not key writes: no revision
    assert list(st.state.items()) == []  # and nothing in the key space
    return result


def test_password_hash_checks_and_is_salted() -> None:
    assert check_password("s3cret", PW)
    assert not check_password("s3cret!", PW)
    assert hash_password("s3cret", b"fedcba9876543210").hash != PW.hash


def test_user_role_permission_lifecycle() -> None:
    st = _Records(DictState())
    assert apply_command(st, UserPut("alice", PW)) == AuthResult(True)
    assert apply_command(st, UserPut("alice", PW)).code == "user_exists"
    assert apply_command(st, UserRole("alice", "app", grant=True)).code == "role_not_found"
    assert apply_command(st, RolePut("app")) == AuthResult(True)
    assert apply_command(st, RolePut("app")).code == "role_exists"
    assert apply_command(st, RolePermission("app", "app/", "readwrite")).ok
    assert apply_command(st, RolePermission("app", "shared/", "read")).ok
    assert apply_command(st, RolePermission("app", "x", "admin")).code == "invalid_permission"
    assert apply_command(st, UserRole("alice", "app", grant=True)).ok
    user = decode_user(st.get(USER_PREFIX + "alice"))
    role = decode_role(st.get(ROLE_PREFIX + "app"))
    assert user is not None and role is not None
    assert user.roles == ("app",) and role.users == ("alice",)
    assert allows([role], "app/1", "write") and allows([role], "app/1", "read")
    assert allows([role], "shared/x", "read") and not allows([role], "shared/x", "write")
    assert not allows([role], "other", "read")
    assert not allows([role], "ap", "read")  # a prefix, not a substring
    # Revoking a permission and deleting the role leave no grant behind.
    assert apply_command(st, RolePermission("app", "shared/", "")).ok
    role = decode_role(st.get(ROLE_PREFIX + "app"))
    assert role is not None and not allows([role], "shared/x", "read")
    assert apply_command(st, RoleDelete("app")).ok
    user = decode_user(st.get(USER_PREFIX + "alice"))
    assert user is not None and user.roles == ()
    assert apply_command(st, RolePut("app")).ok  # recreated: alice is not a member again
    role = decode_role(st.get(ROLE_PREFIX + "app"))
    assert role is not None and role.users == ()
    # Root: granted on demand, never deleted, never given prefix permissions.
    assert apply_command(st, UserRole("alice", ROOT, grant=True)).ok
    assert apply_command(st, RoleDelete(ROOT)).code == "root_role"
    assert apply_command(st, RolePermission(ROOT, "", "read")).code == "root_role"
    assert apply_command(st, UserDelete("alice")).ok
    root = decode_role(st.get(ROLE_PREFIX + ROOT))
    assert root is not None and root.users == ()
    assert apply_command(st, UserDelete("alice")).code == "user_not_found"


def test_bootstrap_root_user_gets_its_role_in_one_step() -> None:
    st = _Records(DictState())
    assert apply_command(st, UserPut(ROOT, PW, root=True)).ok
    user = decode_user(st.get(USER_PREFIX + ROOT))
    role = decode_role(st.get(ROLE_PREFIX + ROOT))
    assert user is not None and user.roles == (ROOT,)
    assert role is not None and role.users == (ROOT,)


def test_signing_key_first_one_stays() -> None:
    st = _Records(DictState())
    apply_command(st, SigningKey("aa" * 32))
    apply_command(st, SigningKey("bb" * 32))
    assert st.get(SIGNING_KEY) == "aa" * 32


def test_commands_round_trip_through_the_codec() -> None:
    for cmd in (
        UserPut("u", PW, create_only=False),
        UserDelete("u"),
        UserRole("u", "r", grant=False),
        RolePut("r"),
        RoleDelete("r"),
        RolePermission("r", "p/", "read"),
        SigningKey("ab"),
    ):
        assert decode_command(encode_command(cmd)) == cmd


def test_snapshot_carries_auth_state(tmp_path: Path) -> None:
    cmds = [UserPut("bob", PW), RolePut("ops"), UserRole("bob", "ops", grant=True)]
    entries = [Entry(Term(1), Index(i), data=encode_command(c)) for i, c in enumerate(cmds, 1)]
    src = LmdbState.open(tmp_path / "a")
    dst = LmdbState.open(tmp_path / "b")
    try:
        src.apply(entries)
        info = src.build_snapshot(tmp_path / "snap")
        dst.install_snapshot(info.path)
        user = decode_user(dst.read(lambda s: s.auth_get(USER_PREFIX + "bob")))
        assert user is not None and user.roles == ("ops",)
        assert check_password("s3cret", user.password)
        assert dst.read(lambda s: s.auth_items("role/")) == src.read(
            lambda s: s.auth_items("role/")
        )
        assert list(dst.items()) == []  # not in the key space
    finally:
        src.close()
        dst.close()


def test_dict_image_carries_auth_state() -> None:
    state = DictState()
    apply_at(state, UserPut("carol", PW), 1)
    apply_at(state, SigningKey("cd" * 32), 2)
    copy = DictState()
    load_image(dict_image(state), copy, "test")
    assert copy.auth_items("") == state.auth_items("") != []
