#!/usr/bin/env bash
# Create or update the backend's virtual environment (.venv) with everything rs-edit needs.
# Idempotent: a second run only checks. Usage: scripts/setup.sh [--dev]
#
# The torch trap: some machines carry a local torch wheel (a CPU build) in pip's find-links that
# pip prefers, but PyPI's torchvision only works with PyPI's own torch build. So torch,
# torchvision and open_clip are installed with --isolated (no pip config, no PIP_* variables)
# from the package index (PIP_INDEX_URL or RS_EDIT_INDEX_URL if you use a mirror), and checked.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${RS_EDIT_VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=""
[[ "${1:-}" == "--dev" ]] && EXTRAS="[dev,scale]"  # scale: Ray, for the Ray executor tests
INDEX_URL=${RS_EDIT_INDEX_URL:-${PIP_INDEX_URL:-https://pypi.org/simple}}
TORCH_PINS=(torch==2.13.0 torchvision==0.28.0 "open_clip_torch>=2.24")

say() { echo "[setup] $*" >&2; }

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  say "rs-edit needs Python >= 3.10 ('$PYTHON' is $("$PYTHON" --version 2>&1 || echo missing))."
  say "Set PYTHON=/path/to/python3.11 and run again."
  exit 1
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating virtual environment $VENV"
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      say "installing python3-venv with apt-get"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      "$PYTHON" -m venv "$VENV"
    else
      say "cannot create a virtual environment: install it with 'sudo apt-get install python3-venv'"
      exit 1
    fi
  fi
fi
PY="$VENV/bin/python"

if ! "$PY" -c 'import torch, torchvision, open_clip' >/dev/null 2>&1; then
  say "installing torch, torchvision and open_clip from $INDEX_URL (about 3 GB the first time)"
  "$PY" -m pip install --isolated --quiet --disable-pip-version-check \
    --index-url "$INDEX_URL" "${TORCH_PINS[@]}"
  if ! "$PY" -c 'import torch, torchvision, open_clip' >/dev/null 2>&1; then
    say "torch/torchvision do not import together; details:"
    "$PY" -c 'import torch, torchvision, open_clip' || true
    exit 1
  fi
fi

# Install the package itself (and its other dependencies) only when pyproject.toml changed.
stamp="$VENV/.rs-edit-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)$EXTRAS"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]] || ! "$PY" -c 'import rs_edit' 2>/dev/null; then
  say "installing rs-edit$EXTRAS into $VENV"
  "$PY" -m pip install --quiet --disable-pip-version-check -e ".$EXTRAS"
  echo "$want" >"$stamp"
fi
say "ready: $VENV/bin/rs-edit"
