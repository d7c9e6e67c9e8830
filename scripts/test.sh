#!/usr/bin/env bash
# The whole test suite: lint, security scan of the plugin, backend tests, plugin tests in QGIS.
# Idempotent: installs what it needs first. Exit status is non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --dev
PY=.venv/bin/python

echo "== ruff (lint and format)"
"$PY" -m ruff check .
"$PY" -m ruff format --check .

echo "== bandit (plugin)"
"$PY" -m bandit -q -r rs_edit_plugin

echo "== backend tests"
"$PY" -m pytest tests/backend -q

echo "== plugin tests (QGIS)"
bash scripts/plugin_tests.sh
