#!/usr/bin/env bash
# The main job on a fresh machine: set up the backend and run `rs-edit demo` (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/rs-edit demo "$@"
