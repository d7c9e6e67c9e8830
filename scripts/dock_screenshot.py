"""Screenshot of the RS Edit dock in a QGIS-like main window, with one finished job and the
map comparing its result with the source (swipe at 50 %).

Runs a real QgsApplication with its GUI (needs a display: scripts/dock_screenshot.sh uses
Xvfb), a map canvas showing a GeoTIFF, the plugin's dock on the right and a layer tree on
the left, and runs one edit job from the dock against the loopback fake backend of the
plugin tests (tests/plugin/fake_backend.py). Nothing touches the user's QGIS profile or
settings: both live in a temporary folder.

Usage: python3 scripts/dock_screenshot.py [OUTPUT.png]   (default docs/images/dock.png)
"""

import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path("/work/shared/data/imagery/rasterio__RGB.byte.tif")  # used when present
WIDTH, HEIGHT = 1360, 1000

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def wait_for(app, predicate, timeout, what):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise SystemExit(f"dock_screenshot: timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.01)


def settle(app, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def synthetic_geotiff(path):
    """A colourful 256 x 256 RGB GeoTIFF in UTM 33N (EPSG:32633)."""
    import numpy as np
    from osgeo import gdal, osr

    size = 256
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    rings = (np.sin(np.hypot(x - 0.4, y - 0.6) * 30) + 1) / 2
    bands = [
        255 * (0.2 + 0.6 * x * rings),
        255 * (0.3 + 0.5 * (1 - y) * (1 - rings) + 0.2 * rings),
        255 * (0.25 + 0.5 * y * x),
    ]
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), size, size, 3, gdal.GDT_Byte)
    dataset.SetGeoTransform((500_000.0, 10.0, 0.0, 5_000_000.0, 0.0, -10.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    dataset.SetProjection(srs.ExportToWkt())
    for i, band in enumerate(bands, start=1):
        dataset.GetRasterBand(i).WriteArray(np.clip(band, 0, 255).astype(np.uint8))
    dataset.FlushCache()
    return path


def load_fake_backend():
    path = ROOT / "tests" / "plugin" / "fake_backend.py"
    spec = importlib.util.spec_from_file_location("rs_edit_fake_backend", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FakeBackend


class Iface:
    """The few QgisInterface methods the dock uses."""

    def __init__(self, window, canvas, bar):
        self._window, self._canvas, self._bar = window, canvas, bar

    def mainWindow(self):
        return self._window

    def mapCanvas(self):
        return self._canvas

    def messageBar(self):
        return self._bar


def main(output):
    work = Path(tempfile.mkdtemp(prefix="rs-edit-"))
    from qgis.PyQt.QtCore import QSettings

    # QgsSettings is a QSettings: keep it (and the auth database) out of the user's profile.
    for fmt in (QSettings.Format.NativeFormat, QSettings.Format.IniFormat):
        QSettings.setPath(fmt, QSettings.Scope.UserScope, str(work / "settings"))

    from qgis.core import (
        QgsApplication,
        QgsLayerTreeModel,
        QgsPointXY,
        QgsProject,
        QgsRasterLayer,
        QgsSettings,
    )
    from qgis.gui import (
        QgsLayerTreeMapCanvasBridge,
        QgsLayerTreeView,
        QgsMapCanvas,
        QgsMessageBar,
    )
    from qgis.PyQt.QtCore import QSize, Qt
    from qgis.PyQt.QtGui import QImage
    from qgis.PyQt.QtWidgets import (
        QDockWidget,
        QMainWindow,
        QScrollArea,
        QVBoxLayout,
        QWidget,
    )

    app = QgsApplication([], True, str(work / "profile"))
    app.initQgis()

    from rs_edit_plugin import settings
    from rs_edit_plugin.dock import RsEditDock

    backend = load_fake_backend()().start()
    settings.set_backend_url(backend.url)
    settings.set_results_dir(str(work / "results"))
    QgsSettings().setValue(settings.PREFIX + "poll_interval_s", 0.2)

    image = SAMPLE if SAMPLE.is_file() else synthetic_geotiff(work / "scene.tif")
    project = QgsProject.instance()
    layer = QgsRasterLayer(str(image), "scene")
    assert layer.isValid(), image
    project.setCrs(layer.crs())
    project.addMapLayer(layer)

    window = QMainWindow()
    window.setWindowTitle("QGIS — RS Edit")
    central = QWidget(window)
    column = QVBoxLayout(central)
    column.setContentsMargins(0, 0, 0, 0)
    bar = QgsMessageBar(central)
    canvas = QgsMapCanvas(central)
    canvas.setCanvasColor(Qt.GlobalColor.white)
    canvas.setDestinationCrs(layer.crs())
    column.addWidget(bar)
    column.addWidget(canvas, 1)
    window.setCentralWidget(central)
    bridge = QgsLayerTreeMapCanvasBridge(project.layerTreeRoot(), canvas)  # noqa: F841

    layers_dock = QDockWidget("Layers", window)
    tree = QgsLayerTreeView(layers_dock)
    tree.setModel(QgsLayerTreeModel(project.layerTreeRoot(), tree))
    tree.setIconSize(QSize(16, 16))
    layers_dock.setWidget(tree)
    window.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, layers_dock)

    dock = RsEditDock(window, Iface(window, canvas, bar))
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    window.resize(WIDTH, HEIGHT)
    window.show()
    window.resizeDocks([layers_dock, dock], [200, 540], Qt.Orientation.Horizontal)
    canvas.setExtent(layer.extent())
    canvas.zoomByFactor(0.8)  # less blank canvas around the (rotated, no-data framed) scene
    canvas.refresh()
    settle(app, 0.5)

    dock.job_tree.setMaximumHeight(90)  # room for the job buttons below it
    dock.job_tree.setColumnWidth(0, 200)
    dock.layer_combo.setLayer(layer)
    dock.check_backend()
    # An ROI polygon in the middle of the scene, drawn as a user would with "Draw polygons".
    dock.draw_polygons()
    e = layer.extent()
    tool = dock.polygon_tool
    for fx, fy in [(0.35, 0.3), (0.65, 0.35), (0.6, 0.7), (0.4, 0.65)]:
        tool.add_point(QgsPointXY(e.xMinimum() + fx * e.width(), e.yMaximum() - fy * e.height()))
    tool.finish()
    dock.prompt_edit.setText("the field is flooded")
    dock.preset_combo.setCurrentText("fast")
    dock.seed_spin.setValue(7)
    dock.run_button.click()
    record = dock.jobs.records[0]
    wait_for(app, lambda: record.finished, 60, "the job")
    if record.state != "succeeded":
        raise SystemExit(f"dock_screenshot: the job {record.state}: {record.message}")
    tree.expandAll()
    # The dock zoomed to the result and offers to compare it with its source: swipe at 50 %
    # (the source left of the line, the result right of it).
    wait_for(app, lambda: dock.swipe_check.isEnabled(), 10, "the compare control")
    dock.swipe_slider.setValue(50)
    dock.swipe_check.setChecked(True)
    # The "finished" message names a temporary folder and wraps in the narrow bar; the job
    # list and the layer tree show the outcome.
    bar.clearWidgets()
    canvas.unsetMapTool(tool)
    canvas.refresh()
    settle(app, 1.0)
    canvas.waitWhileRendering()
    wait_for(app, lambda: dock.compare.item.image is not None, 30, "the swipe's source image")
    # The dock scrolls: show its lower part, with the job list and the compare control.
    scroll = dock.findChild(QScrollArea, "dockScrollArea")
    scroll.verticalScrollBar().setValue(scroll.verticalScrollBar().maximum())
    settle(app, 0.5)

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours keep the PNG small; the UI's text and the image stay readable.
    picture = (
        window.grab()
        .toImage()
        .convertToFormat(QImage.Format.Format_Indexed8, Qt.ImageConversionFlag.ThresholdDither)
    )
    if not picture.save(str(output)):
        raise SystemExit(f"dock_screenshot: could not write {output}")
    print(f"dock_screenshot: wrote {output} ({output.stat().st_size} bytes)")

    dock.cleanup()
    backend.stop()
    project.clear()
    os._exit(0)  # skip exitQgis(): tearing down a GUI session here only risks a crash


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "docs" / "images" / "dock.png"))
