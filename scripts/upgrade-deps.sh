#!/usr/bin/env bash
# Refresh the dependency lock on purpose, then run the full test script.
#   ./scripts/upgrade-deps.sh                          # every dependency to its newest allowed
#   ./scripts/upgrade-deps.sh --upgrade-package msgspec  # one dependency only
# "Allowed" = within pyproject.toml's ranges. Review `git diff uv.lock`; commit it with
# pyproject.toml only when the tests pass.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
find_uv
if [ $# -eq 0 ]; then set -- --upgrade; fi
UV_PYTHON_DOWNLOADS=never "$UV" lock "$@"
git --no-pager diff --stat -- uv.lock || true
exec ./scripts/test.sh
