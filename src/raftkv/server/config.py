"""Cluster configuration: the seed's YAML file + environment + flags -> one node's `Settings`.

Rules:
- What the file may hold (keys, types, limits, defaults, meaning) is declared once, in
  `raftkv.server.config_schema`; this module resolves it: reads the file, applies the overrides,
  checks what depends on several fields (addresses, node ids), and builds `Settings`.
- Precedence: flags > environment > file > defaults. `load_settings` takes the flags as an
  explicit mapping and the environment as a mapping (os.environ only when none is given), so
  every path is testable.
- Everything is validated here, once. A problem raises `ConfigError` whose message starts with
  the field it is about: `raft.election_timeout_ms: ...`, `KV_HTTP_PORT: ...`, `--node-id: ...`.
- Unknown keys are errors: a typo must never silently fall back to a default.
- Advertised vs listen addresses are separate fields so that a deployment whose listen address
  differs from what peers dial (Kubernetes) needs no change outside this module.
- `KV_HTTP_PORT` / `KV_RAFT_PORT` (or the flags) replace the port of this node's own entry, both
  where it listens and what it advertises. `KV_DATA_DIR` replaces `cluster.data_dir`; the node's
  directory is always `<data_dir>/<node id>`.
- `tls.http` (cert, key, optional client_ca and ca) and `tls.peer` (cert, key, ca) are file paths in
  which `{node_id}` is replaced by this node's id, so one file serves the whole cluster
  (`certs/{node_id}/http.crt`: the layout `raftkv certs init` writes); a missing file is an
  error naming the field. RAFTKV_ROOT_PASSWORD (environment only, never logged) is the
  bootstrap root password when `auth.enabled`.
- One tick is the heartbeat interval; the election timeout must be a whole number (>= 2) of ticks.
- `Settings.config` is the validated file with the overrides applied: a key added to the schema
  is read as `settings.config.<section>.<key>` with no change here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import msgspec
import yaml
from msgspec import inspect as mi

from raftkv.raft.lease import safe_lease_ticks
from raftkv.server.config_fields import (
    ConfigError,
    check_keys,
    check_value,
    fields_of,
    parse_struct,
)
from raftkv.server.config_schema import (
    DEFAULT_HTTP_BASE_PORT,
    OVERRIDES,
    REQUIRED_SECTIONS,
    ClusterSection,
    ConfigFile,
    LogFormat,
    RaftSection,
    snapshot_cap,
)
from raftkv.server.limits import HttpLimits
from raftkv.server.tls import HttpTlsFiles
from raftkv.transport.tls import TlsFiles

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_HTTP_BASE_PORT",
    "FLAG_KEYS",
    "LOG_LEVELS",
    "Address",
    "ConfigError",
    "ConfigFile",
    "LogFormat",
    "Settings",
    "load_settings",
]

DEFAULT_CONFIG_PATH: Final = Path("config/multi-node-cluster.yaml")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
ROOT_PASSWORD_ENV: Final = "RAFTKV_ROOT_PASSWORD"
# tls.<part> -> (required keys, optional keys). Paths may contain {node_id}.
_TLS_PARTS: Final[Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "http": (("cert", "key"), ("client_ca", "ca")),
    "peer": (("cert", "key", "ca"), ()),
}

# Flag key (as the CLI passes it) -> (environment variable, name used in error messages).
FLAG_KEYS: Final[Mapping[str, tuple[str, str]]] = {o.key: (o.env, o.flag) for o in OVERRIDES}
_FILE_KEY: Final = {o.key: o.file_key for o in OVERRIDES if o.file_key}

# Node ids name directories and appear in URLs and logs: keep them plain.
_NODE_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@dataclass(frozen=True, slots=True)
class Address:
    """A "host:port" endpoint. IPv6 hosts are written in brackets: "[::1]:9001"."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: object, field: str) -> Address:
        if not isinstance(text, str):
            raise ConfigError(f'{field}: must be a "host:port" string (got {text!r})')
        host, sep, port_text = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ConfigError(f"{field}: IPv6 hosts must be bracketed, as in [::1]:9001")
        if not sep or not _valid_host(host):
            raise ConfigError(f'{field}: {text!r} is not "host:port"')
        return cls(host, _port(port_text, field))

    def with_port(self, port: int) -> Address:
        return Address(self.host, port)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything one node needs, resolved and validated."""

    config_path: Path
    cluster_name: str
    node_id: str
    bootstrap_id: str  # in raft_peers
    data_dir: Path  # <cluster data dir>/<node_id>
    raft_address: Address  # advertised: what peers dial
    http_address: Address  # advertised: what clients and forwarding followers dial
    raft_listen: Address  # where the Raft listener binds (same port as raft_address)
    http_listen: Address  # where the HTTP listener binds (same port as http_address)
    raft_peers: Mapping[str, Address]  # every node, this one included, in declared order
    http_peers: Mapping[str, Address]  # same keys as raft_peers
    heartbeat_ms: int  # = tick_ms
    election_timeout_ms: int  # = election_ticks * heartbeat_ms
    election_ticks: int  # >= 2
    lease_ticks: int  # leader lease (raft/lease.py); 0: lease reads fall back to ReadIndex
    snapshot_every: int  # applied entries between automatic compactions, > 0
    snapshot_keep_entries: int  # entries kept behind a snapshot (memory and disk), >= 0
    max_value_bytes: int  # UTF-8 bytes of one value, > 0
    leader_wait_ms: int  # how long a write waits for a leader before 503 no_leader
    request_timeout_ms: int  # > leader_wait_ms
    metrics: bool  # record and serve Prometheus metrics at /metrics
    log_level: str  # one of LOG_LEVELS
    log_format: LogFormat
    http_limits: HttpLimits  # HTTP hardening (limits.py)
    debug_endpoints: bool  # /debug/*; root-only when auth is on
    config: ConfigFile  # the validated file, defaults filled in, overrides applied
    tls_http: HttpTlsFiles | None = None  # tls.http: HTTPS for the API (None: plain HTTP)
    tls_peer: TlsFiles | None = None  # tls.peer: mutual TLS between members (None: plain TCP)
    auth_enabled: bool = False  # auth.enabled: users, roles, tokens (server/auth*.py)
    token_ttl_s: int = 600  # auth.token_ttl_s: lifetime of a bearer token
    http_engine: str = "fast"  # server.http_engine: "fast" or "aiohttp" (server/runner.py)
    # `serve --join URL` (with its scheme), also on a restart from the member files: a source
    # the operator named that may vouch for members ours lacks (server/members_routes.py).
    join_url: str | None = None
    # RAFTKV_ROOT_PASSWORD: the leader creates user root with it if absent. Never printed.
    root_password: str | None = field(default=None, repr=False)

    @property
    def max_snapshot_bytes(self) -> int:
        """`raft.max_snapshot_bytes` in force (derived from the quota when not set)."""
        return snapshot_cap(self.config)

    @property
    def tick_ms(self) -> int:
        return self.heartbeat_ms

    @property
    def heartbeat_ticks(self) -> int:
        return 1

    @property
    def is_bootstrap(self) -> bool:
        return self.node_id == self.bootstrap_id

    def raft_peer_strings(self) -> dict[str, str]:
        return {node: str(addr) for node, addr in self.raft_peers.items()}

    def http_peer_strings(self) -> dict[str, str]:
        return {node: str(addr) for node, addr in self.http_peers.items()}


def _lease_ticks(raft: RaftSection) -> int:
    """The lease the asyncio driver keeps: it delivers a due tick before stepping a message
    (runtime/ticks.py), so a follower's promise covers election ticks - 1 whole periods."""
    if not raft.lease_reads:
        return 0
    ticks = raft.election_timeout_ms // raft.heartbeat_timeout_ms
    return safe_lease_ticks(ticks, raft.lease_drift_ratio)


def load_settings(
    overrides: Mapping[str, object] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Resolve one node's settings. `overrides` holds CLI flags by FLAG_KEYS name (None = unset)."""
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key in flags:
        if key not in FLAG_KEYS:
            raise ConfigError(f"{key}: unknown override (expected one of {', '.join(FLAG_KEYS)})")
    environ = os.environ if env is None else env
    layer = _Layers(flags, environ)

    config_path = Path(str(layer.get("config") or DEFAULT_CONFIG_PATH))
    sections = _sections(_read_yaml(config_path))
    cluster = parse_struct(ClusterSection, sections.pop("cluster")[1], "cluster")

    raft_peers = _nodes(cluster.nodes)
    node_ids = list(raft_peers)
    http_peers = _http_nodes(cluster.http, raft_peers)
    node_id = _node_id(layer, node_ids)

    if (port := layer.get("raft_port")) is not None:
        raft_peers[node_id] = raft_peers[node_id].with_port(_port(port, layer.source("raft_port")))
    if (port := layer.get("http_port")) is not None:
        http_peers[node_id] = http_peers[node_id].with_port(_port(port, layer.source("http_port")))
    _check_distinct(raft_peers, http_peers)

    bootstrap_id = cluster.bootstrap_id or node_ids[0]
    if bootstrap_id not in raft_peers:
        raise ConfigError(
            f"cluster.bootstrap_id: {bootstrap_id!r} is not in cluster.nodes "
            f"({', '.join(node_ids)})"
        )

    listen = cluster.listen
    if listen is not None and not (isinstance(listen, str) and _valid_host(listen)):
        raise ConfigError(f"cluster.listen: must be a host such as 0.0.0.0 (got {listen!r})")
    raft_address, http_address = raft_peers[node_id], http_peers[node_id]
    # The other sections after the cluster's (their errors come after those of node ids).
    parsed = {name: parse_struct(cls, raw, name) for name, (cls, raw) in sections.items()}
    conf = _apply_overrides(ConfigFile(cluster=cluster, **parsed), layer)
    cluster, raft, server = conf.cluster, conf.raft, conf.server
    snapshot_cap(conf)  # raft.max_snapshot_bytes against storage.quota_bytes (refused early)

    return Settings(
        config_path=config_path,
        cluster_name=cluster.name,
        node_id=node_id,
        bootstrap_id=bootstrap_id,
        data_dir=Path(cluster.data_dir) / node_id,
        raft_address=raft_address,
        http_address=http_address,
        raft_listen=Address(listen, raft_address.port) if listen else raft_address,
        http_listen=Address(listen, http_address.port) if listen else http_address,
        raft_peers=MappingProxyType(raft_peers),
        http_peers=MappingProxyType(http_peers),
        heartbeat_ms=raft.heartbeat_timeout_ms,
        election_timeout_ms=raft.election_timeout_ms,
        election_ticks=raft.election_timeout_ms // raft.heartbeat_timeout_ms,
        lease_ticks=_lease_ticks(raft),
        snapshot_every=raft.snapshot_every,
        snapshot_keep_entries=raft.snapshot_keep_entries,
        max_value_bytes=server.max_value_bytes,
        leader_wait_ms=server.leader_wait_ms,
        request_timeout_ms=server.request_timeout_ms,
        metrics=server.metrics,
        log_level=conf.logging.level,
        log_format=conf.logging.format,
        http_limits=HttpLimits(
            body_timeout_ms=server.body_timeout_ms,
            keepalive_timeout_ms=server.keepalive_timeout_ms,
            max_connections=server.max_connections,
            max_inflight_body_bytes=server.max_inflight_body_bytes,
        ),
        debug_endpoints=server.debug_endpoints,
        config=conf,
        tls_http=_tls_http(conf.tls.http, node_id),
        tls_peer=_tls_peer(conf.tls.peer, node_id),
        auth_enabled=conf.auth.enabled,
        token_ttl_s=conf.auth.token_ttl_s,
        http_engine=server.http_engine,
        root_password=environ.get(ROOT_PASSWORD_ENV) or None,
    )


class _Layers:
    """Flags over environment for the overridable settings; remembers where a value came from."""

    def __init__(self, flags: Mapping[str, object], env: Mapping[str, str]) -> None:
        self._flags = flags
        self._env = env

    def get(self, key: str) -> object | None:
        if key in self._flags:
            return self._flags[key]
        value = self._env.get(FLAG_KEYS[key][0])
        return value if value else None  # an empty variable counts as unset

    def source(self, key: str) -> str:
        env_name, flag_name = FLAG_KEYS[key]
        if key in self._flags:
            return flag_name
        return env_name if self._env.get(env_name) else ""


def _read_yaml(path: Path) -> Mapping[str, object]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: cannot read {path}: {exc}") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"config: {path} must hold a mapping with a 'cluster' section")
    return doc


def _sections(doc: Mapping[str, object]) -> dict[str, Any]:
    """Section name -> (its Struct, its raw mapping) for the sections present in `doc`, after
    checking every key name (top level in declared order, then each section's)."""
    fields = {f.name: f for f in fields_of(ConfigFile)}
    for key in doc:
        if key not in fields:
            raise ConfigError(f"{key}: unknown key (expected one of {', '.join(fields)})")
    found: dict[str, Any] = {}
    for name, f in fields.items():
        raw = doc.get(name)
        if raw is None:
            if name in REQUIRED_SECTIONS:
                raise ConfigError(f"{name}: missing section")
            continue
        assert isinstance(f.type, mi.StructType)  # every top-level key is a section
        check_keys(f.type.cls, raw, name)
        found[name] = (f.type.cls, raw)
    return found


def _apply_overrides(conf: ConfigFile, layer: _Layers) -> ConfigFile:
    """`conf` with the file keys that a flag or environment variable replaces."""
    for key, file_key in _FILE_KEY.items():
        value = layer.get(key)
        if value is None:
            continue
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        section_name, field = file_key.split(".")
        section = getattr(conf, section_name)
        checked = check_value(type(section), field, value, layer.source(key))
        conf = msgspec.structs.replace(
            conf, **{section_name: msgspec.structs.replace(section, **{field: checked})}
        )
    return conf


def _tls_part(raw: object, part: str, node_id: str) -> dict[str, Path] | None:
    if raw is None:
        return None
    field = f"tls.{part}"
    required, optional = _TLS_PARTS[part]
    if not isinstance(raw, dict):
        raise ConfigError(f"{field}: must be a mapping with {', '.join(required)}")
    for key in raw:
        if key not in required + optional:
            allowed = ", ".join(required + optional)
            raise ConfigError(f"{field}.{key}: unknown key (expected one of {allowed})")
    paths: dict[str, Path] = {}
    for key in required + optional:
        value = raw.get(key)
        if value is None:
            if key in required:
                raise ConfigError(f"{field}.{key}: required when {field} is set")
            continue
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{field}.{key}: must be a file path (got {value!r})")
        path = Path(value.replace("{node_id}", node_id))
        if not path.is_file():
            raise ConfigError(
                f"{field}.{key}: {path} does not exist or is not a file"
                " (make certificates with `raftkv certs init`)"
            )
        paths[key] = path
    return paths


def _tls_http(raw: object, node_id: str) -> HttpTlsFiles | None:
    paths = _tls_part(raw, "http", node_id)
    if paths is None:
        return None
    return HttpTlsFiles(paths["cert"], paths["key"], paths.get("client_ca"), paths.get("ca"))


def _tls_peer(raw: object, node_id: str) -> TlsFiles | None:
    paths = _tls_part(raw, "peer", node_id)
    if paths is None:
        return None
    return TlsFiles(paths["cert"], paths["key"], paths["ca"])


def _nodes(raw: object) -> dict[str, Address]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError('cluster.nodes: must map node ids to Raft "host:port" addresses')
    nodes: dict[str, Address] = {}
    for node, addr in raw.items():
        if not isinstance(node, str) or not _NODE_ID_RE.fullmatch(node):
            raise ConfigError(
                f"cluster.nodes: node id {node!r} must be letters, digits, '.', '_' or '-' "
                "(at most 63, starting with a letter or digit)"
            )
        nodes[node] = Address.parse(addr, f"cluster.nodes.{node}")
    return nodes


def _http_nodes(raw: object, raft_peers: Mapping[str, Address]) -> dict[str, Address]:
    given: dict[object, object] = {}
    if raw is not None:
        if not isinstance(raw, dict):
            raise ConfigError('cluster.http: must map node ids to HTTP "host:port" addresses')
        given = raw
        for node in given:
            if node not in raft_peers:
                raise ConfigError(f"cluster.http: {node!r} is not in cluster.nodes")
    http: dict[str, Address] = {}
    for i, (node, raft_addr) in enumerate(raft_peers.items()):
        if node in given:
            http[node] = Address.parse(given[node], f"cluster.http.{node}")
        else:
            http[node] = Address(raft_addr.host, DEFAULT_HTTP_BASE_PORT + i)
    return http


def _node_id(layer: _Layers, node_ids: list[str]) -> str:
    node = layer.get("node_id")
    if node is None:
        if len(node_ids) == 1:
            return node_ids[0]
        raise ConfigError("RAFT_NODE_ID: required (or --node-id): which of the cluster.nodes am I?")
    if node not in node_ids:
        raise ConfigError(
            f"{layer.source('node_id')}: unknown node id {node!r} "
            f"(cluster.nodes has {', '.join(node_ids)})"
        )
    return str(node)


def _check_distinct(raft_peers: Mapping[str, Address], http_peers: Mapping[str, Address]) -> None:
    seen: dict[Address, str] = {}
    for kind, peers in (("raft", raft_peers), ("http", http_peers)):
        for node, addr in peers.items():
            name = f"{node} ({kind})"
            if addr in seen:
                raise ConfigError(f"cluster.nodes: {seen[addr]} and {name} both use {addr}")
            seen[addr] = name


def _port(value: object, field: str) -> int:
    if isinstance(value, bool):
        port = -1
    elif isinstance(value, int):
        port = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        port = int(value)
    else:
        port = -1
    if not 1 <= port <= 65535:
        raise ConfigError(f"{field}: port must be an integer in 1..65535 (got {value!r})")
    return port


def _valid_host(host: str) -> bool:
    return bool(host) and not any(c.isspace() or c in "/[]@?#" for c in host)
