"""The plugin may import only what QGIS ships: a static check over every module."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_TOP_LEVEL = {"qgis", "PyQt5", "osgeo", "numpy"} | set(sys.stdlib_module_names)


def foreign_imports(source, filename="<string>"):
    """Top-level names imported by `source` that QGIS does not ship."""
    bad = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        else:  # relative imports stay inside the plugin
            continue
        bad += [
            f"{filename}:{node.lineno}: {n}"
            for n in names
            if n.split(".")[0] not in ALLOWED_TOP_LEVEL
        ]
    return bad


def test_checker_catches_foreign_imports():
    source = "import os\nimport requests\nfrom torch import nn\nfrom . import x\nimport qgis.core\n"
    assert foreign_imports(source) == ["<string>:2: requests", "<string>:3: torch"]


def test_plugin_imports_only_what_qgis_ships():
    files = sorted(
        p for p in (ROOT / "rs_edit_plugin").rglob("*.py") if "__pycache__" not in p.parts
    )
    assert len(files) >= 4
    bad = []
    for path in files:
        bad += foreign_imports(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert bad == []
