#!/usr/bin/env bash
# Chaos tests (the seed's Step "Chaos Engineering Tests"):
#   ./scripts/chaos-test.sh random-failures|network-partition|load-test-with-failures|cas-txn|membership [options]
# A thin wrapper around `raftkv chaos`: it makes .venv on a fresh clone, installs nftables if
# `nft` is missing and we are root (partitions need both), then runs the scenario against its
# own 3-node cluster on 127.0.0.1-3. Options: --duration S (60), --seed N, --keep-data, --json,
# and more: `./scripts/chaos-test.sh network-partition --help`. Exit status: 0 pass, 1 anomaly,
# 2 could not run, 3 inconclusive.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv >/dev/null || { echo "installation failed; run: source scripts/_venv.sh && ensure_venv" >&2; exit 2; }

if [ $# -eq 0 ]; then
  exec "$VENV/bin/raftkv" chaos --help
fi

if ! command -v nft >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing nftables (partitions are cut with nft)" >&2
    apt-get install -y -qq nftables >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get install -y -qq nftables >/dev/null; } \
      || echo "warning: could not install nftables; partition faults will not run" >&2
  else
    echo "warning: nft not found (and not root): partition faults will not run" >&2
  fi
fi

exec "$VENV/bin/raftkv" chaos "$@"
