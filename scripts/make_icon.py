"""Render resources/icon.svg to rs_edit_plugin/icon.png (64x64) with Qt's SVG renderer.

Run with QGIS's Python, headless:
    QT_QPA_PLATFORM=offscreen /usr/bin/python3 scripts/make_icon.py
"""

import sys
from pathlib import Path

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QGuiApplication, QImage, QPainter
from qgis.PyQt.QtSvg import QSvgRenderer

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "resources" / "icon.svg"
TARGET = ROOT / "rs_edit_plugin" / "icon.png"
SIZE = 64


def main() -> int:
    app = QGuiApplication(sys.argv)  # noqa: F841 - painting needs a GUI application
    renderer = QSvgRenderer(str(SOURCE))
    if not renderer.isValid():
        print(f"error: cannot read SVG {SOURCE}", file=sys.stderr)
        return 1
    image = QImage(SIZE, SIZE, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    if not image.save(str(TARGET), "PNG"):
        print(f"error: cannot write {TARGET}", file=sys.stderr)
        return 1
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
