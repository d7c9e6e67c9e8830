#!/usr/bin/env bash
# Screenshot of the RS Edit dock with a finished job, for the README (docs/images/dock.png).
# Runs scripts/dock_screenshot.py under QGIS's Python in a virtual screen (Xvfb); the job runs
# against the loopback fake backend of the plugin tests, so no real backend is needed.
# Usage: bash scripts/dock_screenshot.sh [OUTPUT.png]
set -euo pipefail

cd "$(dirname "$0")/.."
OUTPUT=${1:-docs/images/dock.png}
if [ -z "${QGIS_PYTHON:-}" ]; then
    if [ -x .venv-qgis/bin/python ]; then QGIS_PYTHON=.venv-qgis/bin/python; else QGIS_PYTHON=/usr/bin/python3; fi
fi

need=()
command -v xvfb-run >/dev/null 2>&1 || need+=(xvfb xauth)
"$QGIS_PYTHON" -c 'import qgis.gui' >/dev/null 2>&1 || need+=(python3-qgis qgis-providers)
"$QGIS_PYTHON" -c 'import numpy; from osgeo import gdal' >/dev/null 2>&1 || need+=(python3-gdal python3-numpy)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "dock_screenshot: installing ${need[*]} with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y "${need[@]}"
    else
        echo "dock_screenshot: missing packages. Install them with:" >&2
        echo "  sudo apt-get install ${need[*]}" >&2
        exit 1
    fi
fi

unset QT_QPA_PLATFORM  # a real (virtual) X screen, not Qt's offscreen platform
xvfb-run -a -s "-screen 0 1400x1050x24" "$QGIS_PYTHON" scripts/dock_screenshot.py "$OUTPUT"
