"""Config loading: the seed's file, defaults, precedence flags > env > file, every validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from raftkv.server.config import Address, ConfigError, load_settings

REPO = Path(__file__).resolve().parents[3]
SEED = """\
cluster:
  name: "distributed-kv-cluster"
  bootstrap_id: "node-1"
  data_dir: "./data/cluster"
  nodes:
    node-1: "localhost:9001"
    node-2: "localhost:9002"
    node-3: "localhost:9003"
raft:
  election_timeout_ms: 100
  heartbeat_timeout_ms: 25
logging:
  level: "info"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str = SEED, node: str | None = "node-1", **env: str):  # type: ignore[no-untyped-def]
    flags: dict[str, object] = {"config": write(tmp_path, text)}
    if node is not None:
        flags["node_id"] = node
    return load_settings(flags, env=env)


def test_repo_config_is_the_seed_file() -> None:
    settings = load_settings(
        {"config": REPO / "config" / "multi-node-cluster.yaml", "node_id": "node-2"}, env={}
    )
    assert settings.cluster_name == "distributed-kv-cluster"
    assert settings.bootstrap_id == "node-1"
    assert settings.raft_peer_strings() == {
        "node-1": "localhost:9001",
        "node-2": "localhost:9002",
        "node-3": "localhost:9003",
    }
    assert settings.http_peer_strings() == {
        "node-1": "localhost:8081",
        "node-2": "localhost:8082",
        "node-3": "localhost:8083",
    }
    assert (settings.heartbeat_ms, settings.election_timeout_ms) == (25, 100)
    assert settings.log_level == "info"


def test_defaults_and_derived_values(tmp_path: Path) -> None:
    s = load(tmp_path, node="node-3")
    assert s.node_id == "node-3"
    assert not s.is_bootstrap
    assert s.data_dir == Path("./data/cluster/node-3")
    assert s.raft_address == Address("localhost", 9003)
    assert s.http_address == Address("localhost", 8083)
    assert s.raft_listen == s.raft_address
    assert s.http_listen == s.http_address
    assert (s.tick_ms, s.heartbeat_ticks, s.election_ticks) == (25, 1, 4)
    assert s.snapshot_every == 100_000
    assert s.max_value_bytes == 1 << 20
    assert (s.leader_wait_ms, s.request_timeout_ms) == (2000, 5000)
    assert s.log_format == "console"
    assert list(s.raft_peers) == ["node-1", "node-2", "node-3"]


def test_optional_keys(tmp_path: Path) -> None:
    text = SEED.replace(
        '    node-3: "localhost:9003"\n',
        '    node-3: "localhost:9003"\n'
        "  http:\n"
        '    node-2: "127.0.0.2:18082"\n'
        '  listen: "0.0.0.0"\n',
    ).replace(
        "logging:\n",
        "  snapshot_every: 50\n"
        "server:\n"
        "  max_value_bytes: 4096\n"
        "  leader_wait_ms: 300\n"
        "  request_timeout_ms: 900\n"
        "logging:\n"
        "  format: json\n",
    )
    s = load(tmp_path, text, node="node-2")
    assert s.http_address == Address("127.0.0.2", 18082)
    assert s.http_peers["node-1"] == Address("localhost", 8081)  # defaults keep declared order
    assert s.http_peers["node-3"] == Address("localhost", 8083)
    assert s.http_listen == Address("0.0.0.0", 18082)
    assert s.raft_listen == Address("0.0.0.0", 9002)
    assert s.raft_address == Address("localhost", 9002)
    assert (s.snapshot_every, s.max_value_bytes) == (50, 4096)
    assert (s.leader_wait_ms, s.request_timeout_ms) == (300, 900)
    assert s.log_format == "json"


def test_ipv6_addresses(tmp_path: Path) -> None:
    s = load(tmp_path, SEED.replace('"localhost:9001"', '"[::1]:9001"'))
    assert s.raft_address == Address("::1", 9001)
    assert str(s.raft_address) == "[::1]:9001"
    assert s.http_address == Address("::1", 8081)


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, SEED)
    env = {
        "RAFT_NODE_ID": "node-2",
        "KV_CONFIG": str(path),
        "KV_LOG_LEVEL": "debug",
        "KV_HTTP_PORT": "18000",
        "KV_RAFT_PORT": "19000",
        "KV_DATA_DIR": "/env/data",
    }
    s = load_settings({}, env=env)
    assert s.node_id == "node-2"
    assert s.config_path == path
    assert s.log_level == "debug"
    assert s.http_address == Address("localhost", 18000)
    assert s.http_listen == Address("localhost", 18000)
    assert s.raft_address == Address("localhost", 19000)
    assert s.raft_peers["node-2"] == Address("localhost", 19000)
    assert s.raft_peers["node-1"] == Address("localhost", 9001)  # only our own entry changes
    assert s.http_peers["node-2"] == Address("localhost", 18000)
    assert s.data_dir == Path("/env/data/node-2")

    flags = {
        "node_id": "node-3",
        "log_level": "ERROR",
        "http_port": 28000,
        "raft_port": "29000",
        "data_dir": tmp_path / "flag",
        "log_format": "json",
        "config": None,  # None means "flag not given"
    }
    s = load_settings(flags, env=env)
    assert s.node_id == "node-3"
    assert s.log_level == "error"
    assert s.http_address.port == 28000
    assert s.raft_address.port == 29000
    assert s.data_dir == tmp_path / "flag" / "node-3"
    assert s.log_format == "json"
    # An empty environment variable counts as unset.
    s = load_settings({"config": path}, env={"RAFT_NODE_ID": "node-1", "KV_LOG_LEVEL": ""})
    assert s.log_level == "info"


def test_single_node_needs_no_node_id(tmp_path: Path) -> None:
    text = SEED.replace('    node-2: "localhost:9002"\n    node-3: "localhost:9003"\n', "")
    assert load(tmp_path, text, node=None).node_id == "node-1"


def test_warn_is_warning(tmp_path: Path) -> None:
    assert load(tmp_path, KV_LOG_LEVEL="WARN").log_level == "warning"


BAD_FILES = [
    (
        SEED.replace("election_timeout_ms: 100", "election_timeout_ms: 25"),
        "raft.election_timeout_ms: must be greater than heartbeat_timeout_ms (25)",
    ),
    (
        SEED.replace("election_timeout_ms: 100", "election_timeout_ms: 110"),
        "raft.election_timeout_ms: must be a multiple of heartbeat_timeout_ms (25)",
    ),
    (
        SEED.replace("heartbeat_timeout_ms: 25", "heartbeat_timeout_ms: 0"),
        "raft.heartbeat_timeout_ms: must be a positive integer (got 0)",
    ),
    (
        SEED.replace("heartbeat_timeout_ms: 25", "heartbeat_timeout_ms: -5"),
        "raft.heartbeat_timeout_ms: must be a positive integer (got -5)",
    ),
    (
        SEED.replace("heartbeat_timeout_ms: 25", "heartbeat_timeout_ms: true"),
        "raft.heartbeat_timeout_ms: must be a positive integer (got True)",
    ),
    (
        SEED.replace("heartbeat_timeout_ms: 25", 'heartbeat_timeout_ms: "25"'),
        "raft.heartbeat_timeout_ms: must be a positive integer (got '25')",
    ),
    (
        SEED.replace("heartbeat_timeout_ms: 25", "heartbeat_timeout_ms: 25\n  snapshot_every: 0"),
        "raft.snapshot_every: must be a positive integer (got 0)",
    ),
    (
        SEED.replace('bootstrap_id: "node-1"', 'bootstrap_id: "node-7"'),
        "cluster.bootstrap_id: 'node-7' is not in cluster.nodes (node-1, node-2, node-3)",
    ),
    (
        SEED.replace('"localhost:9002"', '"localhost"'),
        "cluster.nodes.node-2: 'localhost' is not \"host:port\"",
    ),
    (
        SEED.replace('"localhost:9002"', '"localhost:99999"'),
        "cluster.nodes.node-2: port must be an integer in 1..65535 (got '99999')",
    ),
    (
        SEED.replace('"localhost:9002"', '"localhost:x"'),
        "cluster.nodes.node-2: port must be an integer in 1..65535 (got 'x')",
    ),
    (SEED.replace('"localhost:9002"', '":9002"'), "cluster.nodes.node-2: ':9002' is not"),
    (
        SEED.replace('"localhost:9002"', '"::1:9002"'),
        "cluster.nodes.node-2: IPv6 hosts must be bracketed",
    ),
    (
        SEED.replace('"localhost:9002"', "9002"),
        'cluster.nodes.node-2: must be a "host:port" string',
    ),
    (
        SEED.replace('"localhost:9002"', '"localhost:9001"'),
        "cluster.nodes: node-1 (raft) and node-2 (raft) both use localhost:9001",
    ),
    (
        SEED.replace('"localhost:9003"', '"localhost:8081"'),
        "cluster.nodes: node-3 (raft) and node-1 (http) both use localhost:8081",
    ),
    (SEED.replace("node-2:", "node/2:"), "cluster.nodes: node id 'node/2' must be letters"),
    (SEED.replace("node-2:", "2:"), "cluster.nodes: node id 2 must be letters"),
    (SEED.replace("  nodes:\n", "  nodes: {}\n  old_nodes:\n"), "cluster.old_nodes: unknown key"),
    (
        SEED.replace("  level:", "  levle:"),
        "logging.levle: unknown key (expected one of format, level)",
    ),
    (
        SEED + "extra: 1\n",
        "extra: unknown key (expected one of cluster, raft, server, storage, logging, tls, auth)",
    ),
    (
        SEED.replace('level: "info"', 'level: "loud"'),
        "logging.level: must be one of debug, info, warning, error, critical (got 'loud')",
    ),
    (SEED.replace('level: "info"', "format: xml"), "logging.format: must be console or json"),
    (
        SEED.replace("  election_timeout_ms: 100\n  heartbeat_timeout_ms: 25\n", "").replace(
            "raft:", "raft: 5"
        ),
        "raft: must be a mapping",
    ),
    (
        SEED + "server:\n  max_value_bytes: 0\n",
        "server.max_value_bytes: must be a positive integer",
    ),
    (
        # 64 MiB was accepted before; such an entry never fits in a 64 MiB peer frame.
        SEED + "server:\n  max_value_bytes: 67108864\n",
        "server.max_value_bytes: 67108864 does not fit in one peer frame; "
        "the largest allowed value is 67038999 bytes",
    ),
    (
        SEED + "server:\n  leader_wait_ms: 6000\n",
        "server.request_timeout_ms: must be greater than leader_wait_ms (6000)",
    ),
    (
        SEED + "server:\n  request_timeout_ms: 0\n",
        "server.request_timeout_ms: must be a positive integer (got 0)",
    ),
    (
        SEED.replace('name: "distributed-kv-cluster"', "name: 5"),
        "cluster.name: must be a non-empty",
    ),
    (
        SEED.replace('data_dir: "./data/cluster"', 'data_dir: ""'),
        "cluster.data_dir: must be a non-empty",
    ),
    (
        SEED.replace("  nodes:\n", '  http:\n    node-9: "h:1"\n  nodes:\n'),
        "cluster.http: 'node-9' is not in cluster.nodes",
    ),
    (SEED.replace("  nodes:\n", "  http: [1]\n  nodes:\n"), "cluster.http: must map node ids"),
    (SEED.replace("  nodes:\n", '  listen: "a b"\n  nodes:\n'), "cluster.listen: must be a host"),
    ("cluster:\n  nodes: {}\n", "cluster.nodes: must map node ids"),
    ("raft: {}\n", "cluster: missing section"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_invalid_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(
    ("text", "message"), [("- 1\n", "must hold a mapping"), ("cluster: [\n", "is not valid YAML")]
)
def test_unreadable_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^config: {tmp_path}/c.yaml {message}"):
        load(tmp_path, text)


BAD_ENV = [
    ({"RAFT_NODE_ID": "node-9"}, "RAFT_NODE_ID: unknown node id 'node-9' (cluster.nodes has"),
    ({"KV_HTTP_PORT": "http"}, "KV_HTTP_PORT: port must be an integer in 1..65535 (got 'http')"),
    ({"KV_RAFT_PORT": "0"}, "KV_RAFT_PORT: port must be an integer in 1..65535 (got '0')"),
    ({"KV_LOG_LEVEL": "verbose"}, "KV_LOG_LEVEL: must be one of debug, info"),
    ({"KV_LOG_FORMAT": "xml"}, "KV_LOG_FORMAT: must be console or json"),
    ({"KV_RAFT_PORT": "9001"}, "cluster.nodes: node-1 (raft) and node-2 (raft) both use"),
]


@pytest.mark.parametrize(("env", "message"), BAD_ENV)
def test_invalid_environment(tmp_path: Path, env: dict[str, str], message: str) -> None:
    path = write(tmp_path, SEED)
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load_settings({"config": path}, env={"RAFT_NODE_ID": "node-2", **env})


def test_invalid_flags(tmp_path: Path) -> None:
    path = write(tmp_path, SEED)
    with pytest.raises(ConfigError, match=r"^--node-id: unknown node id 'x'"):
        load_settings({"config": path, "node_id": "x"}, env={"RAFT_NODE_ID": "node-1"})
    with pytest.raises(ConfigError, match=r"^--http-port: port must be"):
        load_settings({"config": path, "node_id": "node-1", "http_port": 70000}, env={})
    with pytest.raises(ConfigError, match=r"^--http-port: port must be"):
        load_settings({"config": path, "node_id": "node-1", "http_port": True}, env={})
    with pytest.raises(ConfigError, match=r"^colour: unknown override"):
        load_settings({"config": path, "colour": "red"}, env={})


def test_missing_node_id_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^RAFT_NODE_ID: required"):
        load(tmp_path, node=None)
    with pytest.raises(ConfigError, match=r"^config: cannot read .*nope.yaml"):
        load_settings({"config": tmp_path / "nope.yaml"}, env={})
