#!/usr/bin/env bash
# The seed's database inspector: ./scripts/inspect-db.sh [status|data|raft|test] [raftkv inspect flags]
# No argument shows everything. Talks to a running cluster (default node localhost:8081; pass
# --address HOST:PORT for another). `raft --data-dir data/cluster/node-1` reads a node's log
# offline. --json prints JSON for scripts. A thin wrapper around `raftkv inspect`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv >/dev/null || { echo "installation failed; run: source scripts/_venv.sh && ensure_venv" >&2; exit 1; }
what="${1:-all}"
[ $# -gt 0 ] && shift
exec "$VENV/bin/raftkv" inspect "$what" "$@"
