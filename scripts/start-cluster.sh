#!/usr/bin/env bash
# Starts a 3-node raftkv cluster in the foreground (the seed's Step 2). Ctrl-C stops all three.
# On a fresh clone it first creates .venv and installs raftkv (our "build" step).
# Each node's command line names its id and the config file, so `pkill -f "node-2"` stops
# exactly node-2 and `pkill -f "cluster"` stops them all. If one node dies, the others keep
# running. Data lives under ./data/cluster/node-N and survives a restart.
set -uo pipefail
cd "$(dirname "$0")/.."
CONFIG="${KV_CONFIG:-config/multi-node-cluster.yaml}"
NODES=(node-1 node-2 node-3)
HTTP=(8081 8082 8083)
RAFT=(9001 9002 9003)

echo "Starting distributed key-value store cluster..."
echo "Building cluster binary..."
source scripts/_venv.sh
ensure_venv >/dev/null || { echo "installation failed; run: source scripts/_venv.sh && ensure_venv" >&2; exit 1; }

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
for port in "${HTTP[@]}"; do
  until curl -fsS "http://localhost:$port/health" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "node on port $port did not come up" >&2; break; fi
    sleep 0.1
  done
done
until curl -fsS "http://localhost:${HTTP[0]}/ready" >/dev/null 2>&1 || [ $SECONDS -ge $deadline ]; do
  sleep 0.1
done

cat <<BANNER

Cluster started successfully!
Node 1: http://localhost:${HTTP[0]} (Raft: localhost:${RAFT[0]})
Node 2: http://localhost:${HTTP[1]} (Raft: localhost:${RAFT[1]})
Node 3: http://localhost:${HTTP[2]} (Raft: localhost:${RAFT[2]})

Try these commands:
  curl http://localhost:${HTTP[0]}/cluster/status
  curl -X PUT http://localhost:${HTTP[0]}/kv/test -d 'hello world'
  curl http://localhost:${HTTP[1]}/kv/test

BANNER

# Keep running while any node runs; a node that dies does not stop the others.
wait
