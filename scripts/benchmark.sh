#!/usr/bin/env bash
# The seed's benchmark: ./scripts/benchmark.sh writes|reads|mixed N [raftkv bench flags]
#   ./scripts/benchmark.sh writes 10000
#   ./scripts/benchmark.sh reads 50000 --consistency stale
#   ./scripts/benchmark.sh mixed 20000 --read-ratio 0.8 --plot mixed.png
# Runs against a running cluster (default node localhost:8081; --address HOST:PORT), writing to
# its current leader. Uses wrk when installed (installed here on Debian if missing and we are
# root), else a pure-Python load generator. A thin wrapper around `raftkv bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: $0 writes|reads|mixed N [options]   (see: raftkv bench writes --help)" >&2
  exit 2
fi
source scripts/_venv.sh
ensure_venv >/dev/null || { echo "installation failed; run: source scripts/_venv.sh && ensure_venv" >&2; exit 1; }
if ! command -v wrk >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing wrk (apt-get)" >&2
  { apt-get update -qq && apt-get install -y -qq wrk; } >/dev/null 2>&1 \
    || echo "wrk not installable; using the Python load generator" >&2
fi
if [[ " $* " == *" --plot "* ]] && ! "$VENV/bin/python" -c "import matplotlib" 2>/dev/null; then
  echo "== installing matplotlib for --plot (from uv.lock)" >&2
  RAFTKV_EXTRAS=test,plot ensure_venv >&2
fi
mode="$1"; count="$2"; shift 2
exec "$VENV/bin/raftkv" bench "$mode" "$count" "$@"
