# Sourced by the scripts: makes .venv with exactly the versions in uv.lock (raftkv plus its test
# extras), bootstrapping uv itself when the machine has only python3.
#
# Rules: every install path goes through the lock (`uv sync --frozen`: never re-resolves, fails if
# uv.lock is missing); uv's own version is pinned here; no toolchain is downloaded (the system
# python3 is used). `uv sync` is a no-op costing ~0.1 s when .venv already matches the lock.
VENV="${RAFTKV_VENV:-$PWD/.venv}"
RAFTKV_UV_VERSION="0.13.9"
RAFTKV_EXTRAS="${RAFTKV_EXTRAS:-test}"

# find_uv — sets UV to a uv binary of the pinned version, installing it into .uv/ when needed.
find_uv() {
  local py="${PYTHON:-python3}" candidate
  for candidate in "$PWD/.uv/bin/uv" "$PWD/.uv/venv/bin/uv" "$(command -v uv 2>/dev/null || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] \
      && [ "$("$candidate" --version 2>/dev/null | awk '{print $2}')" = "$RAFTKV_UV_VERSION" ]; then
      UV="$candidate"
      return 0
    fi
  done
  echo "== installing uv $RAFTKV_UV_VERSION into .uv/"
  if "$py" -m pip --version >/dev/null 2>&1; then
    # --target: a private folder, so no system site-packages are touched (and PEP 668 allows it).
    "$py" -m pip install -q --disable-pip-version-check --target "$PWD/.uv" "uv==$RAFTKV_UV_VERSION" \
      || { echo "could not install uv $RAFTKV_UV_VERSION with $py -m pip" >&2; return 1; }
    UV="$PWD/.uv/bin/uv"
  else
    # No pip for this python3 (e.g. Debian without python3-pip): a throwaway venv brings its own.
    "$py" -m venv "$PWD/.uv/venv" \
      && "$PWD/.uv/venv/bin/python" -m pip install -q --disable-pip-version-check "uv==$RAFTKV_UV_VERSION" \
      || { echo "could not bootstrap uv: $py has neither pip nor venv (Debian: apt-get install python3-venv)" >&2; return 1; }
    UV="$PWD/.uv/venv/bin/uv"
  fi
}

ensure_venv() {
  local py="${PYTHON:-python3}" extra args=()
  find_uv || return 1
  for extra in ${RAFTKV_EXTRAS//,/ }; do args+=(--extra "$extra"); done
  # UV_PROJECT_ENVIRONMENT: the venv uv syncs; UV_PYTHON_DOWNLOADS=never: use this machine's Python.
  UV_PROJECT_ENVIRONMENT="$VENV" UV_PYTHON_DOWNLOADS=never \
    "$UV" sync --frozen --quiet --python "$(command -v "$py")" "${args[@]}"
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
