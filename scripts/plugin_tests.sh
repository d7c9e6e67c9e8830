#!/usr/bin/env bash
# Run the QGIS plugin tests under QGIS's own Python (Debian's python3-qgis), headless.
# Idempotent: installs QGIS (as root) and a .venv-qgis with pytest-qgis only when missing.
# Usage: bash scripts/plugin_tests.sh [extra pytest arguments]
#   -m "not slow" skips the slow tests: a job against the real backend (`rs-edit serve`, found
#   via $RS_EDIT_BACKEND or .venv/bin/rs-edit; it skips by itself when absent) and a real
#   installation of the backend into a temporary environment (a few GB of downloads).
set -euo pipefail

cd "$(dirname "$0")/.."
QGIS_PYTHON=${QGIS_PYTHON:-/usr/bin/python3}  # Debian/Ubuntu python3-qgis
VENV=.venv-qgis
PYTEST_PACKAGES=(pytest "pytest-qgis==5.0.2" pytest-timeout)

# (a) QGIS Python bindings: the plugin tests need the real qgis.core, not a pip package.
if ! "$QGIS_PYTHON" -c 'import qgis.core' >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "plugin_tests: installing QGIS Python bindings with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y python3-qgis qgis-providers python3-venv python3-mock
    else
        echo "plugin_tests: QGIS Python bindings not found for $QGIS_PYTHON." >&2
        echo "Install them with: sudo apt-get install python3-qgis qgis-providers python3-venv" >&2
        exit 1
    fi
fi

# (b) A venv that sees the system's qgis package, plus the test tools.
if [ ! -x "$VENV/bin/python" ]; then
    "$QGIS_PYTHON" -m venv --system-site-packages "$VENV"
fi
if ! "$VENV/bin/python" -c 'import importlib.metadata as m, pytest_timeout
assert m.version("pytest-qgis") == "5.0.2"' >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install --quiet "${PYTEST_PACKAGES[@]}"
fi

# (c) Headless: pytest-qgis creates the QgsApplication before conftest.py is read, so the
# platform must be set here. Exit 5 (no tests collected) counts as a failure.
export QT_QPA_PLATFORM=offscreen
status=0
# The backend's warning filters (pyproject.toml) name rasterio, which this venv lacks.
"$VENV/bin/python" -m pytest tests/plugin -q -o filterwarnings= "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "plugin_tests: no tests were collected" >&2
    exit 1
fi
exit "$status"
