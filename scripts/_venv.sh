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

# ensure_apt CMD:PACKAGE ... — apt-get install the packages whose command is missing (as root).
ensure_apt() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "== not installing ${missing[*]} (need root and apt-get); dependent tests will skip"
    return 0
  fi
  echo "== apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
    || echo "== apt-get install ${missing[*]} failed; dependent tests will skip"
}
