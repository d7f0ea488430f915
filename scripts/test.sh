#!/usr/bin/env bash
# The project's one test command (README "Testing"). On a fresh machine it creates .venv,
# installs raftkv with its test extras, then runs ruff, mypy --strict, import-linter and pytest.
# Fails on the first failing step. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv
# Debian packages some tests need: nftables (chaos partitions), docker-compose (validates the
# compose file), wrk (benchmark smoke test). Installed when missing and we may; tests that need
# them skip with a reason otherwise.
ensure_apt nft:nftables docker-compose:docker-compose wrk:wrk curl:curl

echo "== ruff"
"$VENV/bin/ruff" check src tests bench
"$VENV/bin/ruff" format --check src tests bench
echo "== mypy --strict"
"$VENV/bin/mypy" --strict src/raftkv
echo "== import-linter"
"$VENV/bin/lint-imports"
echo "== pytest"
"$VENV/bin/pytest" "$@"
