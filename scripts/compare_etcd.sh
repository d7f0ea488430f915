#!/usr/bin/env bash
# raftkv side by side with etcd 3.4 on this machine (see docs/benchmarks.md):
#   scripts/compare_etcd.sh            # full run: 3 rounds x 10 s per load, 5 failovers, 60 s stability
#   scripts/compare_etcd.sh --quick    # smoke run (about 2 minutes)
#   scripts/compare_etcd.sh --out docs/last-compare.md --rounds 5 --duration 20
# Installs Debian's etcd-server, etcd-client and wrk when missing (needs root), then runs
# `raftkv bench compare-etcd`, which starts both 3-member clusters on 127.0.0.1 under
# --workdir (default /var/tmp/raftkv-compare, a real disk) and removes nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv >/dev/null || { echo "installation failed; run: source scripts/_venv.sh && ensure_venv" >&2; exit 1; }
if ! command -v etcd >/dev/null 2>&1 || ! command -v wrk >/dev/null 2>&1; then
  echo "== installing etcd-server etcd-client wrk (apt-get)" >&2
  apt-get update -qq >/dev/null
  apt-get install -y -qq etcd-server etcd-client wrk >/dev/null
fi
# Debian's etcd package may start a system etcd on 2379/2380; ours use free ports, so it can stay.
exec "$VENV/bin/raftkv" bench compare-etcd "$@"
