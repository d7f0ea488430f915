"""Joining a running cluster in one command, and restarting from the node's own directory.

Rules:
- `raftkv serve --node-id ID --join URL --raft-address H:P --http-address H:P [--data-dir ROOT]`
  reads NO config file: it asks the cluster at URL for its settings (`GET /cluster/config`:
  name, timing, limits, initial voters, members), asks it to add this node as a learner
  (`POST /cluster/members`; the leader promotes it once caught up), then writes the node's
  `member.json` and starts. Asking again with the same id and addresses is answered as done, so
  a join interrupted after the cluster accepted it can simply be run again.
- Every start writes `<ROOT>/<ID>/member.json` (settings, initial voters, the peers known at
  that time; written atomically). A restart needs only `--node-id` and `--data-dir`: when no
  config file is named (`--config` / KV_CONFIG) and that file exists, it is used and no YAML
  file is read. Peer addresses in it only seed the transport: the replicated membership record
  in the state machine wins once the node runs.
- With a config file, its `nodes` are the INITIAL configuration only (like etcd's
  `--initial-cluster`); after bootstrap the replicated record is the configuration.
- Errors raise `ConfigError` (exit 2) with words that say what to do.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from raftkv.server.config import (
    DEFAULT_DATA_DIR,
    FLAG_KEYS,
    Address,
    ConfigError,
    Settings,
    load_settings,
)

MEMBER_FILE: Final = "member.json"
FORMAT: Final = 1
JOIN_DEADLINE_S: Final = 60.0  # how long a join keeps asking while the cluster has no leader
_HTTP_TIMEOUT_S: Final = 15.0


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
) -> Resolved:
    """Settings from --join, the node's member.json, or the config file (in that order)."""
    environ = os.environ if env is None else env
    node_id = overrides.get("node_id") or environ.get(FLAG_KEYS["node_id"][0]) or None
    data_root = overrides.get("data_dir") or environ.get(FLAG_KEYS["data_dir"][0]) or None
    config_named = overrides.get("config") or environ.get(FLAG_KEYS["config"][0])
    if node_id is not None and (join is not None or not config_named):
        root = Path(str(data_root or DEFAULT_DATA_DIR))
        persisted = root / str(node_id) / MEMBER_FILE
        if persisted.exists():
            settings, initial = _from_member_file(persisted, overrides, environ)
            return Resolved(settings, initial, joined=False)
    if join is not None:
        if node_id is None:
            raise ConfigError("--node-id: required with --join")
        if raft_address is None or http_address is None:
            raise ConfigError("--join: needs --raft-address and --http-address (host:port)")
        root = Path(str(data_root or DEFAULT_DATA_DIR))
        settings, initial = join_cluster(
            join, str(node_id), raft_address, http_address, root, overrides, environ
        )
        return Resolved(settings, initial, joined=True)
    if raft_address is not None or http_address is not None:
        raise ConfigError("--raft-address/--http-address: only with --join")
    return Resolved(load_settings(overrides, env), None, joined=False)


def check_not_removed(settings: Settings, timeout_s: float = 1.0) -> str | None:
    """Ask the other members whether this node was removed while it was away. Returns the peer
    that says so, or None (no answer counts as no: the others refuse us anyway)."""
    for peer, addr in sorted(settings.http_peers.items()):
        if peer == settings.node_id:
            continue
        try:
            with urllib.request.urlopen(f"http://{addr}/cluster/config", timeout=timeout_s) as resp:
                doc = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError):
            continue
        if isinstance(doc, dict) and settings.node_id in doc.get("removed", ()):
            return peer
    return None


# -- member.json -------------------------------------------------------------------------------
def save_member_file(settings: Settings, initial_voters: tuple[str, ...] | None) -> None:
    """Write `<data_dir>/member.json` atomically (tmp, fsync, rename)."""
    doc = {
        "format": FORMAT,
        "cluster_name": settings.cluster_name,
        "node_id": settings.node_id,
        "bootstrap_id": settings.bootstrap_id,
        "raft_address": str(settings.raft_address),
        "http_address": str(settings.http_address),
        "raft_listen": str(settings.raft_listen),
        "http_listen": str(settings.http_listen),
        "heartbeat_ms": settings.heartbeat_ms,
        "election_timeout_ms": settings.election_timeout_ms,
        "snapshot_every": settings.snapshot_every,
        "max_value_bytes": settings.max_value_bytes,
        "leader_wait_ms": settings.leader_wait_ms,
        "request_timeout_ms": settings.request_timeout_ms,
        "metrics": settings.metrics,
        "initial_voters": list(initial_voters or settings.raft_peers),
        "peers": {
            n: {"raft_address": str(a), "http_address": str(settings.http_peers[n])}
            for n, a in settings.raft_peers.items()
        },
    }
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / MEMBER_FILE
    tmp = path.with_name(MEMBER_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _from_member_file(
    path: Path, overrides: Mapping[str, object], env: Mapping[str, str]
) -> tuple[Settings, tuple[str, ...]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            raise ConfigError(f"{path}: unknown format {doc.get('format')!r}")
        return _settings_from(doc, path, overrides, env), tuple(doc["initial_voters"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable member file: {exc!r}") from exc


def _settings_from(
    doc: Mapping[str, Any], source: Path, overrides: Mapping[str, object], env: Mapping[str, str]
) -> Settings:
    node_id = str(doc["node_id"])
    peers = doc["peers"]
    raft_peers = {n: Address.parse(p["raft_address"], f"peers.{n}") for n, p in peers.items()}
    http_peers = {n: Address.parse(p["http_address"], f"peers.{n}") for n, p in peers.items()}
    raft = Address.parse(doc["raft_address"], "raft_address")
    http = Address.parse(doc["http_address"], "http_address")
    raft_peers[node_id], http_peers[node_id] = raft, http
    data_root = overrides.get("data_dir") or env.get(FLAG_KEYS["data_dir"][0]) or DEFAULT_DATA_DIR
    level = str(overrides.get("log_level") or env.get("KV_LOG_LEVEL") or "info").lower()
    fmt = str(overrides.get("log_format") or env.get("KV_LOG_FORMAT") or "console")
    if fmt not in ("console", "json"):
        raise ConfigError(f"--log-format: must be console or json (got {fmt!r})")
    heartbeat = int(doc["heartbeat_ms"])
    election = int(doc["election_timeout_ms"])
    return Settings(
        config_path=source,
        cluster_name=str(doc["cluster_name"]),
        node_id=node_id,
        bootstrap_id=str(doc.get("bootstrap_id") or ""),
        data_dir=Path(str(data_root)) / node_id,
        raft_address=raft,
        http_address=http,
        raft_listen=Address.parse(doc.get("raft_listen", str(raft)), "raft_listen"),
        http_listen=Address.parse(doc.get("http_listen", str(http)), "http_listen"),
        raft_peers=MappingProxyType(raft_peers),
        http_peers=MappingProxyType(http_peers),
        heartbeat_ms=heartbeat,
        election_timeout_ms=election,
        election_ticks=election // heartbeat,
        snapshot_every=int(doc["snapshot_every"]),
        max_value_bytes=int(doc["max_value_bytes"]),
        leader_wait_ms=int(doc["leader_wait_ms"]),
        request_timeout_ms=int(doc["request_timeout_ms"]),
        log_level="warning" if level == "warn" else level,
        log_format="json" if fmt == "json" else "console",
        metrics=bool(doc.get("metrics", True)),
    )


# -- --join ------------------------------------------------------------------------------------
def join_cluster(
    url: str,
    node_id: str,
    raft_address: str,
    http_address: str,
    data_root: Path,
    overrides: Mapping[str, object],
    env: Mapping[str, str],
) -> tuple[Settings, tuple[str, ...]]:
    """Ask the cluster at `url` to add this node as a learner; the settings to start with."""
    base = url.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    raft = str(Address.parse(raft_address, "--raft-address"))
    http = str(Address.parse(http_address, "--http-address"))
    config = _call("GET", f"{base}/cluster/config", None)
    if node_id in config.get("members", {}):
        member = config["members"][node_id]
        if (member["raft_address"], member["http_address"]) != (raft, http):
            raise ConfigError(
                f"--node-id: {node_id} is already a member of the cluster at {url} with other "
                "addresses; pick a new id"
            )
    body = {"id": node_id, "raft_address": raft, "http_address": http, "learner": True}
    _call("POST", f"{base}/cluster/members", body)
    peers = dict(config["members"])
    peers[node_id] = {"raft_address": raft, "http_address": http}
    doc = {
        **config,
        "node_id": node_id,
        "bootstrap_id": "",
        "raft_address": raft,
        "http_address": http,
        "peers": peers,
    }
    settings = _settings_from(doc, Path(f"{base}/cluster/config"), overrides, env)
    settings = _with_root(settings, data_root)
    return settings, tuple(str(v) for v in config["initial_voters"])


def _with_root(settings: Settings, root: Path) -> Settings:
    return replace(settings, data_dir=root / settings.node_id)


def _call(method: str, url: str, body: Mapping[str, object] | None) -> dict[str, Any]:
    """One JSON request; retried while the cluster has no leader (503) or timed out (504) --
    safe: a repeated add with the same id and addresses is answered as already done."""
    deadline = time.monotonic() + JOIN_DEADLINE_S
    data = json.dumps(body).encode() if body is not None else None
    while True:
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=_HTTP_TIMEOUT_S) as resp:
                result: dict[str, Any] = json.loads(resp.read())
                return result
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())
            except ValueError:
                err = {"error": exc.reason, "code": f"http_{exc.code}"}
            if exc.code in (503, 504) and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            raise ConfigError(
                f"--join: {method} {url} answered {exc.code} {err.get('code')}: {err.get('error')}"
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            if time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            raise ConfigError(f"--join: cannot reach {url}: {exc}") from None
