#!/usr/bin/env bash
# Starts a 3-node raftkv cluster in the foreground (the seed's Step 2). Ctrl-C stops all three.
# `--nodes N` (1..9) starts N nodes instead: node-1..node-N on HTTP 8081.. and Raft 9001..,
# from a config file generated next to their data in ./data/cluster-N (a separate cluster: to
# grow a running one, join nodes to it with `raftkv serve --join`, see docs/membership.md).
# On a fresh clone it first creates .venv and installs raftkv (our "build" step).
# Each node's command line names its id and the config file, so `pkill -f "node-2"` stops
# exactly node-2 and `pkill -f "cluster"` stops them all. If one node dies, the others keep
# running. Data lives under ./data/cluster/node-N and survives a restart.
set -uo pipefail
cd "$(dirname "$0")/.."
CONFIG="${KV_CONFIG:-config/multi-node-cluster.yaml}"
COUNT=3
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) COUNT="${2:-}"; shift 2 ;;
    --nodes=*) COUNT="${1#--nodes=}"; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (usage: $0 [--nodes N])" >&2; exit 2 ;;
  esac
done
if ! [[ "$COUNT" =~ ^[1-9]$ ]]; then
  echo "--nodes: must be a number from 1 to 9 (got '${COUNT}')" >&2
  exit 2
fi
NODES=() HTTP=() RAFT=()
for ((i = 1; i <= COUNT; i++)); do
  NODES+=("node-$i") HTTP+=($((8080 + i))) RAFT+=($((9000 + i)))
done
if [ "$COUNT" -ne 3 ]; then
  # A cluster of another size: its own config file and data root, generated from the seed's.
  root="./data/cluster-$COUNT"
  mkdir -p "$root"
  CONFIG="$root/cluster.yaml"
  {
    echo "cluster:"
    echo "  name: \"distributed-kv-cluster-$COUNT\""
    echo "  bootstrap_id: \"node-1\""
    echo "  data_dir: \"$root\""
    echo "  nodes:"
    for i in "${!NODES[@]}"; do echo "    ${NODES[$i]}: \"localhost:${RAFT[$i]}\""; done
    echo "raft:"
    echo "  election_timeout_ms: 100"
    echo "  heartbeat_timeout_ms: 25"
    echo "logging:"
    echo "  level: \"info\""
  } >"$CONFIG"
fi

echo "Starting distributed key-value store cluster..."
echo "Building cluster binary..."
source scripts/_venv.sh
install_log="$(mktemp)"
if ! ensure_venv >"$install_log" 2>&1; then
  cat "$install_log" >&2
  echo "installation failed (see above)" >&2
  exit 1
fi
rm -f "$install_log"

# Refuse to start over a cluster (or anything else) already holding our ports.
for port in "${HTTP[@]}" "${RAFT[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use (is a cluster already running? stop it with: pkill -f cluster)" >&2
    exit 1
  fi
done

pids=()
stop_all() {
  trap - INT TERM
  echo
  echo "Stopping cluster..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait
  exit 0
}
trap stop_all INT TERM

for i in "${!NODES[@]}"; do
  id="${NODES[$i]}"
  if [ "$i" -eq 0 ]; then echo "Starting $id (bootstrap)..."; else echo "Starting $id..."; fi
  "$VENV/bin/raftkv" serve --config "$CONFIG" --node-id "$id" &
  pids+=($!)
done

# Wait (bounded) until every node answers /health, and a leader is elected.
deadline=$((SECONDS + 30))
for i in "${!HTTP[@]}"; do
  until curl -fsS "http://localhost:${HTTP[$i]}/health" >/dev/null 2>&1; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "${NODES[$i]} exited during startup (see its log above)" >&2
      break
    fi
    if [ $SECONDS -ge $deadline ]; then echo "${NODES[$i]} did not come up" >&2; break; fi
    sleep 0.1
  done
done
alive=0
for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=$((alive + 1)); done
if [ "$alive" -eq 0 ]; then
  echo "no node is running; cluster not started" >&2
  exit 1
fi
until curl -fsS "http://localhost:${HTTP[0]}/ready" >/dev/null 2>&1 || [ $SECONDS -ge $deadline ]; do
  sleep 0.1
done

echo
echo "Cluster started successfully!"
for i in "${!NODES[@]}"; do
  echo "Node $((i + 1)): http://localhost:${HTTP[$i]} (Raft: localhost:${RAFT[$i]})"
done
cat <<BANNER

Try these commands:
  curl http://localhost:${HTTP[0]}/cluster/status
  curl -X PUT http://localhost:${HTTP[0]}/kv/test -d 'hello world'
  curl http://localhost:${HTTP[$((COUNT > 1 ? 1 : 0))]}/kv/test

BANNER

# Keep running while any node runs; a node that dies does not stop the others.
wait
