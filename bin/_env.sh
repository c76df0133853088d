# Shared by bin/run and bin/test: a virtualenv with the pinned requirements, made or reused.
# Usage: source bin/_env.sh REQUIREMENTS_FILE
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  # Debian packages a fresh machine may lack; installed once, only when missing.
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> Installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "cleanups needs Python 3.11 or newer as '$PYTHON' (set PYTHON=... to choose another)." >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> Creating virtualenv .venv"
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv
    "$PYTHON" -m venv .venv
  fi
fi

requirements=$1
stamp=.venv/.installed-$(basename "$requirements")
digest=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
  echo "==> Installing $requirements"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$requirements"
  echo "$digest" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p .local
