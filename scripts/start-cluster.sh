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
