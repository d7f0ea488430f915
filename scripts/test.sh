#!/usr/bin/env bash
# The project's one test command (README "Testing"). On a fresh machine it bootstraps uv, creates
# .venv with exactly the versions in uv.lock (raftkv + test extras), checks the lock is current,
# then runs ruff, mypy --strict, import-linter and pytest.
# Fails on the first failing step. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv
echo "== uv lock --check"
# A pyproject.toml change without its uv.lock fails here: installs must never drift from the lock.
UV_PYTHON_DOWNLOADS=never "$UV" lock --check --quiet \
  || { echo "uv.lock is stale: run 'uv lock' (or ./scripts/upgrade-deps.sh) and commit it" >&2; exit 1; }
# Debian packages some tests need: nftables (chaos partitions), docker-compose (validates the
# compose file), wrk (benchmark smoke test). Installed when missing and we may; tests that need
# them skip with a reason otherwise.
ensure_apt nft:nftables docker-compose:docker-compose wrk:wrk curl:curl

echo "== ruff"
"$VENV/bin/ruff" check src tests
"$VENV/bin/ruff" format --check src tests
echo "== mypy --strict"
"$VENV/bin/mypy" --strict src/raftkv
echo "== import-linter"
"$VENV/bin/lint-imports"
echo "== pytest"
"$VENV/bin/pytest" "$@"
