"""The declared configuration schema: every key of the YAML file, and every flag/env override.

Rules:
- This is the ONE place a configuration key is added: a field on its section's Struct with
  its type, `Meta` limits, a default and `Meta(description=...)`. Validation, defaults, error
  messages (`raft.snapshot_every: must be a positive integer (got 0)`) and the README's table
  follow from it (`raftkv.server.config_fields`); a node reads the resolved value as
  `settings.config.<section>.<key>`. Then run `./scripts/config-table.sh` to refresh the README
  (a test fails until you do).
- Cross-field rules of a section go in its `validate()` method, raising `ConfigError` that
  names the field. Fields marked `custom` (addresses, node ids) are checked in `config.py`,
  where they are resolved against each other and the overrides.
- Keys and their meaning are forever compatible: rename nothing, and a new key has a default
  so that existing files keep working. Unknown keys are errors (a typo must never fall back to
  a default silently).
- `OVERRIDES` lists what flags and environment variables may set (flags > environment > file >
  defaults); `file_key` says which file key an override replaces, if any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from raftkv.server.config_fields import ConfigError
from raftkv.server.limits import DEFAULT_HTTP_LIMITS, largest_value_bytes

LogFormat = Literal["console", "json"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
NonEmptyStr = Annotated[str, Meta(min_length=1)]

DEFAULT_HTTP_BASE_PORT: Final = 8081
_LIMITS: Final = DEFAULT_HTTP_LIMITS


def _ms(description: str, *, le: int | None = None) -> Meta:
    return Meta(ge=1, le=le, description=description)


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Common options: immutable, keyword-only, unknown keys refused."""


class ClusterSection(_Section, frozen=True, kw_only=True):
    name: Annotated[
        str, Meta(min_length=1, description="cluster name; peers of another cluster are refused")
    ] = "raftkv"
    bootstrap_id: Annotated[
        NonEmptyStr | None,
        Meta(
            description="the node that starts a fresh cluster (it must be in `cluster.nodes`)",
            extra={"default_doc": "the first node"},
        ),
    ] = None
    data_dir: Annotated[
        str,
        Meta(min_length=1, description="data directory root; a node uses `<data_dir>/<node id>`"),
    ] = "./data/cluster"
    nodes: Annotated[
        dict[str, str],
        Meta(
            description='node id → Raft `"host:port"` (ids: letters, digits, `.`, `_`, `-`)',
            extra={"custom": True, "required": True},
        ),
    ] = msgspec.field(default_factory=dict)
    http: Annotated[
        dict[str, str] | None,
        Meta(
            description='node id → HTTP `"host:port"`',
            extra={"custom": True, "default_doc": "Raft host, ports 8081, 8082 … in node order"},
        ),
    ] = None
    listen: Annotated[
        str | None,
        Meta(
            description="host every listener binds, e.g. `0.0.0.0` in containers",
            extra={"custom": True, "default_doc": "the advertised host"},
        ),
    ] = None
    auto_promote: Annotated[
        bool,
        Meta(
            description="the leader promotes a joining learner to voter once it has caught up "
            "(docs/membership.md)"
        ),
    ] = True


class RaftSection(_Section, frozen=True, kw_only=True):
    election_timeout_ms: Annotated[
        int, _ms("election timeout, randomized in [t, 2t); a multiple (≥ 2) of the heartbeat")
    ] = 100
    heartbeat_timeout_ms: Annotated[int, _ms("heartbeat interval = the Raft tick")] = 25
    snapshot_every: Annotated[
        int, Meta(ge=1, description="applied entries between automatic snapshots + compaction")
    ] = 100_000
    snapshot_keep_entries: Annotated[
        int,
        Meta(
            ge=0,
            description="entries kept behind a snapshot (in memory and in the durable log) "
            "so a slightly lagging follower catches up by log, not by a full snapshot",
        ),
    ] = 1_000
    snapshot_builder: Annotated[
        Literal["process", "thread"],
        Meta(
            description="`process`: snapshot files are written by a helper process of the "
            "node (read-only on its LMDB state, lower CPU priority), so the build never holds "
            "the node's interpreter lock; `thread`: on a worker thread of the node"
        ),
    ] = "process"
    max_snapshot_bytes: Annotated[
        Annotated[int, Meta(ge=1 << 20, le=(1 << 63) - 1)] | None,
        Meta(
            description="largest snapshot a node accepts from a peer (a bigger announced size "
            "is refused before any byte is written; so is one that does not fit on the disk); "
            "at least twice `storage.quota_bytes`, so a legitimate snapshot always fits",
            extra={
                "default_doc": "2 x `storage.quota_bytes` + 1 GiB (8 GiB with no quota)",
            },
        ),
    ] = None
    lease_reads: Annotated[
        bool,
        Meta(
            description="leader leases for `consistency=lease` reads (docs/api.md); false: "
            "those reads take a ReadIndex round, and followers make no lease promise"
        ),
    ] = True
    lease_drift_ratio: Annotated[
        float,
        Meta(
            ge=0.0,
            le=0.5,
            description="clock-drift bound r of a lease: it lasts (election timeout - 1 tick) "
            "* (1 - r)/(1 + r), in whole ticks (2 ticks with the defaults); 0 ticks: no lease",
        ),
    ] = 0.1

    def validate(self) -> None:
        heartbeat, election = self.heartbeat_timeout_ms, self.election_timeout_ms
        if election <= heartbeat:
            raise ConfigError(
                f"raft.election_timeout_ms: must be greater than heartbeat_timeout_ms ({heartbeat})"
            )
        if election % heartbeat:
            raise ConfigError(
                f"raft.election_timeout_ms: must be a multiple of heartbeat_timeout_ms "
                f"({heartbeat}), the tick; got {election}"
            )


class ServerSection(_Section, frozen=True, kw_only=True):
    max_value_bytes: Annotated[
        int,
        Meta(
            ge=1,
            description="largest value in UTF-8 bytes (larger: 413 `value_too_large`); at most "
            "what fits in one peer frame",
        ),
    ] = 1 << 20
    leader_wait_ms: Annotated[
        int, _ms("how long a write waits for a leader before 503 `no_leader`")
    ] = 2000
    request_timeout_ms: Annotated[
        int, _ms("a write's deadline (then 504); greater than `leader_wait_ms`")
    ] = 5000
    # HTTP hardening (server/limits.py); defaults far above what benchmarks use.
    body_timeout_ms: Annotated[
        int, _ms("a request body must arrive within this (else 408 `body_timeout`)")
    ] = _LIMITS.body_timeout_ms
    keepalive_timeout_ms: Annotated[
        int, _ms("idle keep-alive connections are closed after this")
    ] = _LIMITS.keepalive_timeout_ms
    max_connections: Annotated[
        int, Meta(ge=1, description="concurrent HTTP connections per node (then 503)")
    ] = _LIMITS.max_connections
    max_inflight_body_bytes: Annotated[
        int, Meta(ge=1, description="request-body bytes held at once per node (then 503)")
    ] = _LIMITS.max_inflight_body_bytes
    debug_endpoints: Annotated[
        bool, Meta(description="serve `/debug/*` (root-only when auth is on)")
    ] = True
    metrics: Annotated[
        bool, Meta(description="record and serve Prometheus metrics at `/metrics`")
    ] = True
    http_engine: Annotated[
        Literal["aiohttp", "fast"],
        Meta(
            description="`fast`: PUT/GET/DELETE `/kv/{key}` on a lean httptools protocol, "
            "everything else on aiohttp (same port, same replies); `aiohttp`: all on aiohttp"
        ),
    ] = "fast"
    forward_over_peer: Annotated[
        bool,
        Meta(
            description="a follower forwards PUT/DELETE `/kv/{key}` to the leader as frames on "
            "the peer connection (batched per loop turn) instead of HTTP requests; only to a "
            "leader that announced it (else HTTP, as before)"
        ),
    ] = True
    read_workers: Annotated[
        Annotated[int, Meta(ge=0, le=64)] | Literal["auto"],
        Meta(
            description="processes serving `GET /kv/{key}` beside the node, from its LMDB state "
            "(linearizable reads ask the node for a read fence); `auto`: 1 on a machine with "
            "more than one core, else 0. Used with the `fast` engine, without `tls.http` and "
            "`auth.enabled` (docs/http-engine.md)"
        ),
    ] = 0

    def validate(self) -> None:
        if self.max_value_bytes > (largest := largest_value_bytes()):
            # One value is one Raft entry, and an entry must fit in one peer frame with a key of
            # the largest size: otherwise it is committed locally but never replicates.
            raise ConfigError(
                f"server.max_value_bytes: {self.max_value_bytes} does not fit in one peer frame; "
                f"the largest allowed value is {largest} bytes"
            )
        if self.request_timeout_ms <= self.leader_wait_ms:
            # Otherwise a write waiting for a leader would always time out (504) before it could
            # be told there is none (503), and the client would not know it is safe to retry.
            raise ConfigError(
                f"server.request_timeout_ms: must be greater than leader_wait_ms "
                f"({self.leader_wait_ms})"
            )


class StorageSection(_Section, frozen=True, kw_only=True):
    history_revisions: Annotated[
        int,
        Meta(
            ge=0,
            description="revisions of history kept for `?revision=` reads and watches; the "
            "leader compacts older ones automatically (0: keep all until `POST /compact`)",
        ),
    ] = 100_000
    quota_bytes: Annotated[
        int,
        Meta(
            ge=0,
            le=(1 << 60),
            description="space quota: the logical size of the data (live keys and values plus "
            "retained history, the same on every node); past it the `no_space` alarm refuses "
            "writes that grow the data (507) until usage falls below 90 % (0: no quota)",
        ),
    ] = 2 << 30
    min_free_bytes: Annotated[
        int,
        Meta(
            ge=0,
            description="a node whose data disk has less free space raises the `no_space` alarm "
            "(cleared once it has this + 10 %), before the log or state hits a full disk (0: off)",
        ),
    ] = 64 << 20


class LoggingSection(_Section, frozen=True, kw_only=True):
    level: Annotated[
        LogLevel,
        Meta(
            description="log level (any case; `warn` = `warning`)",
            extra={"aliases": {"warn": "warning"}},
        ),
    ] = "info"
    format: Annotated[LogFormat, Meta(description="log line format")] = "console"


class TlsSection(_Section, frozen=True, kw_only=True):
    # Checked in config.py (`_tls_part`): file paths, `{node_id}` replaced by the node's id.
    http: Annotated[
        dict[str, str] | None,
        Meta(
            description="HTTPS for the API: `cert`, `key`, optional `client_ca` (then client "
            "certificates are required) and `ca` (issuer of the nodes' HTTP certificates, for "
            "node-to-node HTTPS; default `tls.peer.ca`); paths may hold `{node_id}`",
            extra={"custom": True, "default_doc": "plain HTTP"},
        ),
    ] = None
    peer: Annotated[
        dict[str, str] | None,
        Meta(
            description="mutual TLS between members: `cert`, `key`, `ca` (the cluster CA); "
            "paths may hold `{node_id}`",
            extra={"custom": True, "default_doc": "plain TCP"},
        ),
    ] = None


class AuthSection(_Section, frozen=True, kw_only=True):
    enabled: Annotated[
        bool,
        Meta(description="require users and roles (Basic or bearer token) on the HTTP API"),
    ] = False
    token_ttl_s: Annotated[
        int, Meta(ge=1, description="lifetime of a token from `POST /auth/token`, in seconds")
    ] = 600


class ConfigFile(_Section, frozen=True, kw_only=True):
    """The whole file. Sections in this order; `cluster` is required."""

    cluster: ClusterSection = msgspec.field(default_factory=ClusterSection)
    raft: RaftSection = msgspec.field(default_factory=RaftSection)
    server: ServerSection = msgspec.field(default_factory=ServerSection)
    storage: StorageSection = msgspec.field(default_factory=StorageSection)
    logging: LoggingSection = msgspec.field(default_factory=LoggingSection)
    tls: TlsSection = msgspec.field(default_factory=TlsSection)
    auth: AuthSection = msgspec.field(default_factory=AuthSection)


# raft.max_snapshot_bytes without a quota to derive it from (the fixed default before quotas).
UNQUOTED_SNAPSHOT_BYTES: Final = 8 << 30
SNAPSHOT_HEADROOM: Final = 1 << 30


def snapshot_cap(conf: ConfigFile) -> int:
    """`raft.max_snapshot_bytes` in force: the configured value, or derived from the quota.

    A snapshot holds more than the quota counts (kv/quota.py): the one older version per key
    kept at the compact revision (up to the live data again), history not yet dropped by the
    bounded physical compaction, sessions' remembered replies, auth records, and what was in
    flight when the alarm was raised. Twice the quota plus 1 GiB leaves room for all of it; an
    explicit value below twice the quota is refused: a follower that needs a snapshot of a full
    store could then never catch up."""
    quota = conf.storage.quota_bytes
    explicit = conf.raft.max_snapshot_bytes
    if explicit is None:
        return 2 * quota + SNAPSHOT_HEADROOM if quota else UNQUOTED_SNAPSHOT_BYTES
    if explicit < 2 * quota:
        raise ConfigError(
            f"raft.max_snapshot_bytes: {explicit} is below twice storage.quota_bytes "
            f"({2 * quota}): a snapshot of a store at its quota (with the history and older "
            f"versions the quota does not count) may not fit, and a follower that needs one "
            f"could never catch up; raise it to at least {2 * quota}, lower the quota, or leave "
            f"it unset (derived: {2 * quota + SNAPSHOT_HEADROOM})"
        )
    return explicit


REQUIRED_SECTIONS: Final = frozenset({"cluster"})


@dataclass(frozen=True, slots=True)
class Override:
    """A setting a flag and an environment variable may give (they win over the file)."""

    key: str  # the name `load_settings` receives it under (the CLI's parameter)
    env: str
    flag: str
    description: str
    file_key: str | None = None  # "section.key" it replaces, if any
    default_doc: str = ""


OVERRIDES: Final = (
    Override(
        "node_id", "RAFT_NODE_ID", "--node-id", "this node's id",
        default_doc="required with more than one node",
    ),
    Override(
        "config", "KV_CONFIG", "--config", "the YAML config file",
        default_doc="`config/multi-node-cluster.yaml`",
    ),
    Override(
        "data_dir", "KV_DATA_DIR", "--data-dir", "data directory root",
        file_key="cluster.data_dir",
    ),
    Override(
        "http_port", "KV_HTTP_PORT", "--http-port",
        "this node's HTTP listen and advertised port", default_doc="from the config",
    ),
    Override(
        "raft_port", "KV_RAFT_PORT", "--raft-port",
        "this node's Raft listen and advertised port", default_doc="from the config",
    ),
    Override(
        "log_level", "KV_LOG_LEVEL", "--log-level", "log level", file_key="logging.level"
    ),
    Override(
        "log_format", "KV_LOG_FORMAT", "--log-format", "`console` or `json`",
        file_key="logging.format",
    ),
)  # fmt: skip
