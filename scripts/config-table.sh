#!/usr/bin/env bash
# Regenerate README.md's configuration tables from the declared schema
# (src/raftkv/server/config_schema.py). Run after adding or changing a config key.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv
exec .venv/bin/python -m raftkv.server.config_doc README.md
