"""Cluster configuration: the seed's YAML file + environment + flags -> one node's `Settings`.

Rules:
- Precedence: flags > environment > file > defaults. `load_settings` takes the flags as an
  explicit mapping and the environment as a mapping (os.environ only when none is given), so
  every path is testable.
- Everything is validated here, once. A problem raises `ConfigError` whose message starts with
  the field it is about: `raft.election_timeout_ms: ...`, `KV_HTTP_PORT: ...`, `--node-id: ...`.
- Unknown keys are errors: a typo must never silently fall back to a default.
- The file is the seed's `config/multi-node-cluster.yaml` plus optional keys: `cluster.http`
  (node id -> HTTP "host:port"; default: the node's Raft host with ports 8081, 8082, ... in the
  nodes' declared order), `cluster.listen` (a host every node binds its listeners to, e.g.
  "0.0.0.0" in containers; default: the advertised host), `raft.snapshot_every`,
  `server.max_value_bytes`, `server.leader_wait_ms`, `server.request_timeout_ms`, `logging.format`,
  the HTTP hardening limits (`server.body_timeout_ms`, `server.keepalive_timeout_ms`,
  `server.max_connections`, `server.max_inflight_body_bytes`; see limits.py),
  `server.debug_endpoints` and `server.metrics` (Prometheus /metrics, default true).
- `server.max_value_bytes` must fit in one peer frame (limits.largest_value_bytes); the error
  names the largest allowed value.
- Advertised vs listen addresses are separate fields so that a deployment whose listen address
  differs from what peers dial (Kubernetes) needs no change outside this module.
- `KV_HTTP_PORT` / `KV_RAFT_PORT` (or the flags) replace the port of this node's own entry, both
  where it listens and what it advertises. `KV_DATA_DIR` replaces `cluster.data_dir`; the node's
  directory is always `<data_dir>/<node id>`.
- One tick is the heartbeat interval; the election timeout must be a whole number (>= 2) of ticks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal, cast

import yaml

from raftkv.server.limits import (
    DEFAULT_HTTP_LIMITS,
    HTTP_LIMIT_KEYS,
    HttpLimits,
    largest_value_bytes,
)

LogFormat = Literal["console", "json"]

DEFAULT_CONFIG_PATH: Final = Path("config/multi-node-cluster.yaml")
DEFAULT_CLUSTER_NAME: Final = "raftkv"
DEFAULT_DATA_DIR: Final = "./data/cluster"
DEFAULT_HTTP_BASE_PORT: Final = 8081
DEFAULT_ELECTION_TIMEOUT_MS: Final = 100
DEFAULT_HEARTBEAT_MS: Final = 25
DEFAULT_SNAPSHOT_EVERY: Final = 10_000
DEFAULT_MAX_VALUE_BYTES: Final = 1 << 20
DEFAULT_LEADER_WAIT_MS: Final = 2000
DEFAULT_REQUEST_TIMEOUT_MS: Final = 5000
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")

# Section -> allowed keys. Anything else in the file is an error.
_SCHEMA: Final[Mapping[str, frozenset[str]]] = {
    "cluster": frozenset({"name", "bootstrap_id", "data_dir", "nodes", "http", "listen"}),
    "raft": frozenset({"election_timeout_ms", "heartbeat_timeout_ms", "snapshot_every"}),
    "server": frozenset(
        {
            "max_value_bytes",
            "leader_wait_ms",
            "request_timeout_ms",
            *HTTP_LIMIT_KEYS,
            "debug_endpoints",
            "metrics",
        }
    ),
    "logging": frozenset({"level", "format"}),
}

# Flag key (as the CLI passes it) -> (environment variable, name used in error messages).
FLAG_KEYS: Final[Mapping[str, tuple[str, str]]] = {
    "node_id": ("RAFT_NODE_ID", "--node-id"),
    "config": ("KV_CONFIG", "--config"),
    "data_dir": ("KV_DATA_DIR", "--data-dir"),
    "http_port": ("KV_HTTP_PORT", "--http-port"),
    "raft_port": ("KV_RAFT_PORT", "--raft-port"),
    "log_level": ("KV_LOG_LEVEL", "--log-level"),
    "log_format": ("KV_LOG_FORMAT", "--log-format"),
}

# Node ids name directories and appear in URLs and logs: keep them plain.
_NODE_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field."""


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
    snapshot_every: int  # applied entries between automatic compactions, > 0
    max_value_bytes: int  # UTF-8 bytes of one value, > 0
    leader_wait_ms: int  # how long a write waits for a leader before 503 no_leader
    request_timeout_ms: int  # > leader_wait_ms
    metrics: bool  # record and serve Prometheus metrics at /metrics
    log_level: str  # one of LOG_LEVELS
    log_format: LogFormat
    # HTTP hardening (limits.py); defaults far above what benchmarks use.
    http_limits: HttpLimits = DEFAULT_HTTP_LIMITS
    debug_endpoints: bool = True  # /debug/*; root-only when auth is on

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
    doc = _read_yaml(config_path)
    cluster = _section(doc, "cluster", required=True)
    raft = _section(doc, "raft")
    server = _section(doc, "server")
    logging_ = _section(doc, "logging")

    raft_peers = _nodes(cluster.get("nodes"))
    node_ids = list(raft_peers)
    http_peers = _http_nodes(cluster.get("http"), raft_peers)
    node_id = _node_id(layer, node_ids)

    if (port := layer.get("raft_port")) is not None:
        raft_peers[node_id] = raft_peers[node_id].with_port(_port(port, layer.source("raft_port")))
    if (port := layer.get("http_port")) is not None:
        http_peers[node_id] = http_peers[node_id].with_port(_port(port, layer.source("http_port")))
    _check_distinct(raft_peers, http_peers)

    bootstrap_id = _opt_str(cluster, "cluster.bootstrap_id", node_ids[0])
    if bootstrap_id not in raft_peers:
        raise ConfigError(
            f"cluster.bootstrap_id: {bootstrap_id!r} is not in cluster.nodes "
            f"({', '.join(node_ids)})"
        )

    listen = cluster.get("listen")
    if listen is not None and not (isinstance(listen, str) and _valid_host(listen)):
        raise ConfigError(f"cluster.listen: must be a host such as 0.0.0.0 (got {listen!r})")
    listen_host = listen if isinstance(listen, str) else None
    raft_address, http_address = raft_peers[node_id], http_peers[node_id]

    heartbeat = _pos_int(raft, "raft.heartbeat_timeout_ms", DEFAULT_HEARTBEAT_MS)
    election = _pos_int(raft, "raft.election_timeout_ms", DEFAULT_ELECTION_TIMEOUT_MS)
    if election <= heartbeat:
        raise ConfigError(
            f"raft.election_timeout_ms: must be greater than heartbeat_timeout_ms ({heartbeat})"
        )
    if election % heartbeat:
        raise ConfigError(
            f"raft.election_timeout_ms: must be a multiple of heartbeat_timeout_ms ({heartbeat}),"
            f" the tick; got {election}"
        )

    max_value = _pos_int(server, "server.max_value_bytes", DEFAULT_MAX_VALUE_BYTES)
    if max_value > (largest := largest_value_bytes()):
        # One value is one Raft entry, and an entry must fit in one peer frame with a key of the
        # largest size: otherwise it is committed locally but never replicates, and writes stop.
        raise ConfigError(
            f"server.max_value_bytes: {max_value} does not fit in one peer frame; "
            f"the largest allowed value is {largest} bytes"
        )
    leader_wait = _pos_int(server, "server.leader_wait_ms", DEFAULT_LEADER_WAIT_MS)
    request_timeout = _pos_int(server, "server.request_timeout_ms", DEFAULT_REQUEST_TIMEOUT_MS)
    if request_timeout <= leader_wait:
        # Otherwise a write waiting for a leader would always time out (504) before it could be
        # told there is none (503), and the client would not know it is safe to retry.
        raise ConfigError(
            f"server.request_timeout_ms: must be greater than leader_wait_ms ({leader_wait})"
        )

    data_root = layer.get("data_dir")
    if data_root is None:
        data_root = _opt_str(cluster, "cluster.data_dir", DEFAULT_DATA_DIR)
    if not str(data_root):
        raise ConfigError(f"{layer.source('data_dir') or 'cluster.data_dir'}: must not be empty")

    return Settings(
        config_path=config_path,
        cluster_name=_opt_str(cluster, "cluster.name", DEFAULT_CLUSTER_NAME),
        node_id=node_id,
        bootstrap_id=bootstrap_id,
        data_dir=Path(str(data_root)) / node_id,
        raft_address=raft_address,
        http_address=http_address,
        raft_listen=Address(listen_host, raft_address.port) if listen_host else raft_address,
        http_listen=Address(listen_host, http_address.port) if listen_host else http_address,
        raft_peers=MappingProxyType(raft_peers),
        http_peers=MappingProxyType(http_peers),
        heartbeat_ms=heartbeat,
        election_timeout_ms=election,
        election_ticks=election // heartbeat,
        snapshot_every=_pos_int(raft, "raft.snapshot_every", DEFAULT_SNAPSHOT_EVERY),
        max_value_bytes=max_value,
        leader_wait_ms=leader_wait,
        request_timeout_ms=request_timeout,
        metrics=_bool(server, "server.metrics", True),
        log_level=_log_level(layer, logging_),
        log_format=_log_format(layer, logging_),
        http_limits=HttpLimits(
            body_timeout_ms=_pos_int(
                server, "server.body_timeout_ms", DEFAULT_HTTP_LIMITS.body_timeout_ms
            ),
            keepalive_timeout_ms=_pos_int(
                server, "server.keepalive_timeout_ms", DEFAULT_HTTP_LIMITS.keepalive_timeout_ms
            ),
            max_connections=_pos_int(
                server, "server.max_connections", DEFAULT_HTTP_LIMITS.max_connections
            ),
            max_inflight_body_bytes=_pos_int(
                server,
                "server.max_inflight_body_bytes",
                DEFAULT_HTTP_LIMITS.max_inflight_body_bytes,
            ),
        ),
        debug_endpoints=_bool(server, "server.debug_endpoints", True),
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
    for key in doc:
        if key not in _SCHEMA:
            raise ConfigError(f"{key}: unknown key (expected one of {', '.join(_SCHEMA)})")
    return cast("Mapping[str, object]", doc)


def _section(doc: Mapping[str, object], name: str, *, required: bool = False) -> dict[str, object]:
    raw = doc.get(name)
    if raw is None:
        if required:
            raise ConfigError(f"{name}: missing section")
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: must be a mapping")
    allowed = _SCHEMA[name]
    for key in raw:
        if key not in allowed:
            raise ConfigError(
                f"{name}.{key}: unknown key (expected one of {', '.join(sorted(allowed))})"
            )
    # A key written with no value (`level:`) means "use the default".
    return {k: v for k, v in raw.items() if v is not None}


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


def _log_level(layer: _Layers, section: Mapping[str, object]) -> str:
    value = layer.get("log_level")
    field = layer.source("log_level")
    if value is None:
        value, field = section.get("level", "info"), "logging.level"
    level = str(value).lower()
    level = "warning" if level == "warn" else level
    if not isinstance(value, str) or level not in LOG_LEVELS:
        raise ConfigError(f"{field}: must be one of {', '.join(LOG_LEVELS)} (got {value!r})")
    return level


def _log_format(layer: _Layers, section: Mapping[str, object]) -> LogFormat:
    value = layer.get("log_format")
    field = layer.source("log_format")
    if value is None:
        value, field = section.get("format", "console"), "logging.format"
    if value == "console" or value == "json":
        return value
    raise ConfigError(f"{field}: must be console or json (got {value!r})")


def _opt_str(section: Mapping[str, object], field: str, default: str) -> str:
    value = section.get(field.rpartition(".")[2], default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{field}: must be a non-empty string (got {value!r})")
    return value


def _bool(section: Mapping[str, object], field: str, default: bool) -> bool:
    value = section.get(field.rpartition(".")[2], default)
    if not isinstance(value, bool):
        raise ConfigError(f"{field}: must be true or false (got {value!r})")
    return value


def _pos_int(section: Mapping[str, object], field: str, default: int) -> int:
    value = section.get(field.rpartition(".")[2], default)
    # bool is an int subclass; `true` is never a sensible count of milliseconds.
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{field}: must be a positive integer (got {value!r})")
    return value


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
