#!/usr/bin/env bash
# Starts a 3-node raftkv cluster in the foreground (the seed's Step 2). Ctrl-C stops all three.
# On a fresh clone it first creates .venv and installs raftkv (our "build" step).
# Each node's command line names its id and the config file, so `pkill -f "node-2"` stops
# exactly node-2 and `pkill -f "cluster"` stops them all. If one node dies, the others keep
# running. Data lives under ./data/cluster/node-N and survives a restart.
#
# --tls: the same cluster with HTTPS, mutual TLS between the nodes and authentication
# (config/multi-node-cluster-tls.yaml, data under ./data/cluster-tls). Certificates are made in
# ./certs with `raftkv certs init` when certs/ca.crt is missing; user root gets the password in
# RAFTKV_ROOT_PASSWORD, else one generated once and kept in certs/root-password (0600).
#
# --nodes N (1..9): N nodes instead of 3, node-1..node-N on HTTP 8081.. and Raft 9001.., from a
# config file generated next to their data in ./data/cluster-N (a separate cluster: to grow a
# running one, join nodes to it with `raftkv serve --join`, see docs/membership.md).
set -uo pipefail
cd "$(dirname "$0")/.."
TLS=0
COUNT=3
while [ $# -gt 0 ]; do
  case "$1" in
    --tls) TLS=1; shift ;;
    --nodes) COUNT="${2:-}"; shift 2 ;;
    --nodes=*) COUNT="${1#--nodes=}"; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (expected --tls or --nodes N)" >&2; exit 2 ;;
  esac
done
if ! [[ "$COUNT" =~ ^[1-9]$ ]]; then
  echo "--nodes: must be a number from 1 to 9 (got '${COUNT}')" >&2
  exit 2
fi
if [ "$TLS" -eq 1 ] && [ "$COUNT" -ne 3 ]; then
  echo "--tls starts the 3-node cluster of config/multi-node-cluster-tls.yaml only" >&2
  exit 2
fi
if [ "$TLS" -eq 1 ]; then
  CONFIG="${KV_CONFIG:-config/multi-node-cluster-tls.yaml}"
  SCHEME=https
  CURL=(curl --cacert certs/ca.crt)
else
  CONFIG="${KV_CONFIG:-config/multi-node-cluster.yaml}"
  SCHEME=http
  CURL=(curl)
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

if [ "$TLS" -eq 1 ]; then
  if [ ! -f certs/ca.crt ]; then
    echo "Making certificates in ./certs ..."
    "$VENV/bin/raftkv" certs init --nodes node-1,node-2,node-3 --hosts localhost,127.0.0.1 \
      --out certs >/dev/null || exit 1
  fi
  if [ -z "${RAFTKV_ROOT_PASSWORD:-}" ]; then
    if [ ! -f certs/root-password ]; then
      (umask 077 && "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(18))' \
        >certs/root-password)
    fi
    RAFTKV_ROOT_PASSWORD="$(cat certs/root-password)"
  fi
  export RAFTKV_ROOT_PASSWORD
fi

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
  until "${CURL[@]}" -fsS "$SCHEME://localhost:${HTTP[$i]}/health" >/dev/null 2>&1; do
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
until "${CURL[@]}" -fsS "$SCHEME://localhost:${HTTP[0]}/ready" >/dev/null 2>&1 \
  || [ $SECONDS -ge $deadline ]; do
  sleep 0.1
done

if [ "$TLS" -eq 1 ]; then  # the leader creates user root a moment after the election
  until "${CURL[@]}" -fsS -u "root:$RAFTKV_ROOT_PASSWORD" "$SCHEME://localhost:${HTTP[0]}/auth/whoami" \
    >/dev/null 2>&1 || [ $SECONDS -ge $deadline ]; do
    sleep 0.1
  done
fi

if [ "$TLS" -eq 0 ]; then
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
else
cat <<BANNER

Cluster started successfully (HTTPS, mutual TLS between nodes, authentication on)!
Node 1: https://localhost:${HTTP[0]} (Raft: localhost:${RAFT[0]})
Node 2: https://localhost:${HTTP[1]} (Raft: localhost:${RAFT[1]})
Node 3: https://localhost:${HTTP[2]} (Raft: localhost:${RAFT[2]})
User root, password: ${RAFTKV_ROOT_PASSWORD}

Try these commands:
  curl --cacert certs/ca.crt https://localhost:${HTTP[0]}/cluster/status
  curl --cacert certs/ca.crt -u 'root:${RAFTKV_ROOT_PASSWORD}' -X PUT https://localhost:${HTTP[0]}/kv/test -d 'hello world'
  curl --cacert certs/ca.crt -u 'root:${RAFTKV_ROOT_PASSWORD}' https://localhost:${HTTP[1]}/kv/test
  curl --cacert certs/ca.crt https://localhost:${HTTP[1]}/kv/test      # 401: credentials required
  TOKEN=\$(curl -s --cacert certs/ca.crt -u 'root:${RAFTKV_ROOT_PASSWORD}' -X POST https://localhost:${HTTP[0]}/auth/token | sed 's/.*"token":"\([^"]*\)".*/\1/')
  curl --cacert certs/ca.crt -H "Authorization: Bearer \$TOKEN" https://localhost:${HTTP[2]}/kv/test

BANNER
fi

# Keep running while any node runs; a node that dies does not stop the others.
wait
