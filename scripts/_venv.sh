# Sourced by the scripts: makes .venv and installs raftkv (with test extras) when missing or stale.
VENV="${RAFTKV_VENV:-$PWD/.venv}"
ensure_venv() {
  local py="${PYTHON:-python3}"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$py" -m venv "$VENV"
  fi
  local stamp="$VENV/.raftkv-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "== installing raftkv[test] into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    touch "$stamp"
  fi
}
