"""Joining a running cluster in one command, and restarting from the node's own directory.

Rules:
- `raftkv serve --node-id ID --join URL --raft-address H:P --http-address H:P [--data-dir ROOT]`
  reads NO config file: it asks the cluster at URL for its settings (`GET /cluster/config`:
  the `cluster`, `raft`, `server` and `storage` sections of the configuration file every member runs
  with, plus the initial voters and the live members), asks it to add this node as a learner
  (`POST /cluster/members`; the leader promotes it once caught up), then writes its own files
  (below) and starts from them. Asking again with the same id and addresses is answered as done,
  so a join interrupted after the cluster accepted it can simply be run again.
- Every start writes two files in `<ROOT>/<ID>/` (atomically: tmp, fsync, rename):
  `member.yaml`, a configuration file in the declared schema (`config_schema.py`) whose
  `cluster.nodes`/`cluster.http` are the members known at that time, and `member.json` (the
  node id and the cluster's initial voters). A restart needs only `--node-id` and `--data-dir`:
  when no config file is named (`--config` / KV_CONFIG) and they exist, they are used and no
  other YAML file is read. Their addresses only seed the transport: the replicated membership
  record (runtime/members.py) wins once the node runs. A restart that names `--join URL` too
  keeps the URL (`Settings.join_url`): while the node knows no leader, the cluster there may
  vouch for members its files and record lack (server/members_routes.py) -- the members it
  knows may all have been removed while it was down.
- With a config file, its `nodes` are the INITIAL configuration only (like etcd's
  `--initial-cluster`); after bootstrap the replicated record is the configuration.
- With security on (docs/security.md): the cluster's `tls` and `auth` sections are shared like
  the others (TLS paths keep their `{node_id}`, so the joining node's files are where the
  cluster's config says: `raftkv certs add-node` writes them there). The join requests go to an
  https:// URL (or a bare host:port when a TLS option is given) verified against `--cacert`
  (`JoinAccess`); they carry the operator's credentials (`--user/--password` or `--token`) if
  given, and the POST presents the joining node's own peer certificate (from the shared
  `tls.peer`, unless `--cert` names another): a member's certificate may add members, so a
  node with a certificate from `certs add-node` joins without a password.
- `check_not_removed` asks the other members over https when the API is, with the node's own
  peer certificate (server/tls.py `node_client_context`).
- Errors raise `ConfigError` (exit 2) with words that say what to do.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import msgspec
import yaml

from raftkv.server.config import FLAG_KEYS, Address, ConfigError, Settings, load_settings
from raftkv.server.config_schema import ClusterSection

MEMBER_CONFIG: Final = "member.yaml"
MEMBER_FILE: Final = "member.json"
FORMAT: Final = 1
JOIN_DEADLINE_S: Final = 60.0  # how long a join keeps asking while the cluster has no leader
# What a joining node copies (tls: file paths with `{node_id}`, never the files themselves).
SHARED_SECTIONS: Final = ("cluster", "raft", "server", "storage", "tls", "auth")
_HTTP_TIMEOUT_S: Final = 15.0
_DEFAULT_ROOT: Final = ClusterSection().data_dir


@dataclass(frozen=True, slots=True)
class JoinAccess:
    """How `--join` reaches the cluster: TLS verification, a client certificate, credentials
    (the `raftkv` connection flags, cli/connection.py)."""

    ca: Path | None = None  # --cacert: verify the cluster's HTTPS certificate with this CA
    cert: Path | None = None  # --cert/--key: present this certificate instead of the peer one
    key: Path | None = None
    verify: bool = True  # --insecure: False
    auth_header: str | None = field(default=None, repr=False)

    @property
    def tls_asked(self) -> bool:
        return self.ca is not None or self.cert is not None or not self.verify

    def context(self, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        """The client context; `cert`/`key`: the certificate to present (default --cert)."""
        ctx = ssl.create_default_context(cafile=str(self.ca) if self.ca is not None else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        cert, key = (self.cert, self.key) if self.cert is not None else (cert, key)
        if cert is not None:
            ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
        return ctx


@dataclass(frozen=True, slots=True)
class Resolved:
    """The settings to serve with, and what the runtime needs beyond them."""

    settings: Settings
    initial_voters: tuple[str, ...] | None  # None: every node of settings.raft_peers
    joined: bool  # started by --join this time


def resolve(
    overrides: Mapping[str, object],
    *,
    join: str | None,
    raft_address: str | None,
    http_address: str | None,
    env: Mapping[str, str] | None = None,
    access: JoinAccess | None = None,
) -> Resolved:
    """Settings from the node's own files, --join, or the config file (in that order)."""
    environ = os.environ if env is None else env
    node_id = overrides.get("node_id") or environ.get(FLAG_KEYS["node_id"][0]) or None
    data_root = overrides.get("data_dir") or environ.get(FLAG_KEYS["data_dir"][0]) or None
    config_named = overrides.get("config") or environ.get(FLAG_KEYS["config"][0])
    if node_id is not None and (join is not None or not config_named):
        node_dir = Path(str(data_root or _DEFAULT_ROOT)) / str(node_id)
        if (node_dir / MEMBER_FILE).exists() and (node_dir / MEMBER_CONFIG).exists():
            settings, initial = _from_member_files(node_dir, overrides, environ)
            if join is not None:
                if "://" not in join and settings.tls_http is not None:
                    # This cluster's API is HTTPS: a bare host:port means https, never a
                    # plaintext request whose answer could vouch or stop this node.
                    join = "https://" + join
                settings = replace(settings, join_url=join_base(join, access or JoinAccess()))
            return Resolved(settings, initial, joined=False)
    if join is not None:
        if node_id is None:
            raise ConfigError("--node-id: required with --join")
        if raft_address is None or http_address is None:
            raise ConfigError("--join: needs --raft-address and --http-address (host:port)")
        root = Path(str(data_root or _DEFAULT_ROOT))
        settings, initial = join_cluster(
            join, str(node_id), raft_address, http_address, root, overrides, environ, access
        )
        settings = replace(settings, join_url=join_base(join, access or JoinAccess()))
        return Resolved(settings, initial, joined=True)
    if raft_address is not None or http_address is not None:
        raise ConfigError("--raft-address/--http-address: only with --join")
    return Resolved(load_settings(overrides, env), None, joined=False)


def shared_config(settings: Settings) -> dict[str, Any]:
    """The sections of this node's configuration every member shares (for GET /cluster/config),
    without what is this node's own (its addresses, data directory, listen host)."""
    doc = msgspec.to_builtins(settings.config)
    cluster = {
        k: v for k, v in doc["cluster"].items() if k not in ("nodes", "http", "data_dir", "listen")
    }
    return {"cluster": cluster, **{s: doc[s] for s in SHARED_SECTIONS[1:] if s in doc}}


# -- the node's own files ----------------------------------------------------------------------
def save_member_files(settings: Settings, initial_voters: tuple[str, ...] | None) -> None:
    """Write `member.yaml` (a config file in the declared schema) and `member.json`."""
    doc = _drop_none(msgspec.to_builtins(settings.config))
    doc["cluster"]["nodes"] = {n: str(a) for n, a in settings.raft_peers.items()}
    doc["cluster"]["http"] = {n: str(a) for n, a in settings.http_peers.items()}
    doc["cluster"]["data_dir"] = str(settings.data_dir.parent)
    if settings.bootstrap_id in settings.raft_peers:
        doc["cluster"]["bootstrap_id"] = settings.bootstrap_id
    meta = {
        "format": FORMAT,
        "node_id": settings.node_id,
        "initial_voters": list(initial_voters or settings.raft_peers),
    }
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _write(settings.data_dir / MEMBER_CONFIG, yaml.safe_dump(doc, sort_keys=False))
    _write(settings.data_dir / MEMBER_FILE, json.dumps(meta, indent=2) + "\n")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _drop_none(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _drop_none(v) for k, v in doc.items() if v is not None}
    return doc


def _from_member_files(
    node_dir: Path, overrides: Mapping[str, object], env: Mapping[str, str]
) -> tuple[Settings, tuple[str, ...]]:
    path = node_dir / MEMBER_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{path}: unknown format {meta.get('format')!r}")
        initial = tuple(str(v) for v in meta["initial_voters"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable member file: {exc!r}") from exc
    flags = {**overrides, "config": str(node_dir / MEMBER_CONFIG), "node_id": meta["node_id"]}
    flags["data_dir"] = flags.get("data_dir") or str(node_dir.parent)
    return load_settings(flags, {k: v for k, v in env.items() if k != "KV_CONFIG"}), initial


# -- --join ------------------------------------------------------------------------------------
def join_cluster(
    url: str,
    node_id: str,
    raft_address: str,
    http_address: str,
    data_root: Path,
    overrides: Mapping[str, object],
    env: Mapping[str, str],
    access: JoinAccess | None = None,
) -> tuple[Settings, tuple[str, ...]]:
    """Ask the cluster at `url` to add this node as a learner; the settings to start with."""
    access = access or JoinAccess()
    base = join_base(url, access)
    raft = str(Address.parse(raft_address, "--raft-address"))
    http = str(Address.parse(http_address, "--http-address"))
    https = base.startswith("https://")
    if not https and access.tls_asked:
        raise ConfigError(f"--join: TLS options given for {url}; use an https:// URL")
    try:
        ctx = access.context() if https else None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--cacert/--cert/--key: cannot load them ({exc})") from None
    info = _call("GET", f"{base}/cluster/config", None, ctx, access.auth_header)
    if node_id in info.get("removed", ()):
        raise ConfigError(
            f"--node-id: {node_id} was removed from the cluster at {url}; ids are never reused: "
            "pick a new id"
        )
    members: dict[str, dict[str, str]] = dict(info["members"])
    if node_id in members and (
        members[node_id]["raft_address"],
        members[node_id]["http_address"],
    ) != (raft, http):
        raise ConfigError(
            f"--node-id: {node_id} is already a member of the cluster at {url} with other "
            "addresses; pick a new id"
        )
    body = {"id": node_id, "raft_address": raft, "http_address": http, "learner": True}
    if https:
        ctx = _member_context(access, info["config"].get("tls"), node_id)
    _call("POST", f"{base}/cluster/members", body, ctx, access.auth_header)
    members[node_id] = {"raft_address": raft, "http_address": http}
    doc = _drop_none(dict(info["config"]))
    doc["cluster"] = {
        **doc.get("cluster", {}),
        "nodes": {n: m["raft_address"] for n, m in members.items()},
        "http": {n: m["http_address"] for n, m in members.items()},
        "data_dir": str(data_root),
    }
    # Never this node: a joining node must not campaign as a fresh cluster's bootstrap node.
    others = [n for n in info["initial_voters"] if n in members and n != node_id]
    doc["cluster"]["bootstrap_id"] = (
        others[0] if others else next(n for n in members if n != node_id)
    )
    data_root.mkdir(parents=True, exist_ok=True)
    staged = data_root / f".join-{node_id}.yaml"
    _write(staged, yaml.safe_dump(doc, sort_keys=False))
    try:
        flags = {**overrides, "config": str(staged), "node_id": node_id, "data_dir": str(data_root)}
        settings = load_settings(flags, {k: v for k, v in env.items() if k != "KV_CONFIG"})
    finally:
        staged.unlink(missing_ok=True)
    return settings, tuple(str(v) for v in info["initial_voters"])


def join_base(url: str, access: JoinAccess) -> str:
    """The --join URL with a scheme (https when a TLS option is given) and no trailing '/'."""
    base = url.rstrip("/")
    if "://" not in base:
        base = ("https://" if access.tls_asked else "http://") + base
    return base


def _member_context(access: JoinAccess, tls: object, node_id: str) -> ssl.SSLContext:
    """The POST's context: it presents this node's peer certificate when the cluster's shared
    `tls.peer` names files that exist for it (and --cert does not name another)."""
    peer = tls.get("peer") if isinstance(tls, dict) else None
    cert = key = None
    if (
        isinstance(peer, dict)
        and isinstance(peer.get("cert"), str)
        and isinstance(peer.get("key"), str)
    ):
        cert = Path(peer["cert"].replace("{node_id}", node_id))
        key = Path(peer["key"].replace("{node_id}", node_id))
        if not (cert.is_file() and key.is_file()):
            cert = key = None  # credentials must do (and the start will name the missing files)
    try:
        return access.context(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls.peer: cannot load {cert} / {key} to join with ({exc})") from None


def _call(
    method: str,
    url: str,
    body: Mapping[str, object] | None,
    ctx: ssl.SSLContext | None = None,
    auth_header: str | None = None,
) -> dict[str, Any]:
    """One JSON request; retried while the cluster has no leader (503), timed out (504), is busy
    with another membership change (409 `change_in_progress`: e.g. the leader promoting the
    node that joined just before) or cannot be reached -- safe: an add repeated with the same id
    and addresses is answered as already done. A failed certificate check is not retried: it
    will not heal."""
    deadline = time.monotonic() + JOIN_DEADLINE_S
    data = json.dumps(body).encode() if body is not None else None
    while True:
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth_header is not None:
            req.add_header("Authorization", auth_header)
        try:
            with urllib.request.urlopen(req, timeout=_HTTP_TIMEOUT_S, context=ctx) as resp:
                result: dict[str, Any] = json.loads(resp.read())
                return result
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())
            except ValueError:
                err = {"error": exc.reason, "code": f"http_{exc.code}"}
            busy = exc.code == 409 and err.get("code") == "change_in_progress"
            if (exc.code in (503, 504) or busy) and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            hint = ""
            if exc.code in (401, 403):
                hint = (
                    " (auth is on: give --user/--password or --token of a root user, or make "
                    "this node's peer certificate with `raftkv certs add-node`)"
                )
            raise ConfigError(
                f"--join: {method} {url} answered {exc.code} {err.get('code')}: "
                f"{err.get('error')}{hint}"
            ) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLError):
                raise ConfigError(
                    f"--join: TLS with {url} failed ({exc.reason}); give the cluster's CA with "
                    "--cacert"
                ) from None
            if time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            raise ConfigError(f"--join: cannot reach {url}: {exc}") from None
        except (OSError, ValueError) as exc:
            if time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            raise ConfigError(f"--join: cannot reach {url}: {exc}") from None


def check_not_removed(
    settings: Settings, timeout_s: float = 1.0, ctx: ssl.SSLContext | None = None
) -> str | None:
    """Ask the other members whether this node was removed while it was away. Returns the peer
    that says so, or None (no answer counts as no: the others refuse us anyway). `ctx`: the
    node's client context when the API is HTTPS (server/tls.py `node_client_context`)."""
    scheme = "https" if ctx is not None else "http"
    for peer, addr in sorted(settings.http_peers.items()):
        if peer == settings.node_id:
            continue
        try:
            url = f"{scheme}://{addr}/cluster/config"
            with urllib.request.urlopen(url, timeout=timeout_s, context=ctx) as resp:
                doc = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError):
            continue
        if isinstance(doc, dict) and settings.node_id in doc.get("removed", ()):
            return peer
    return None
