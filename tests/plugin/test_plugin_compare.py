"""Compare a result with its source: the dock's swipe and flicker (rs_edit_plugin/compare.py)."""

import numpy as np
import pytest
from helpers import make_geotiff, wait_for
from qgis.core import (
    QgsApplication,
    QgsCoordinateTransform,
    QgsMapRendererParallelJob,
    QgsMultiBandColorRenderer,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
)
from qgis.gui import QgsLayerTreeMapCanvasBridge
from qgis.PyQt.QtGui import QColor, QPainter

from rs_edit_plugin.compare import FLICKER_MS
from rs_edit_plugin.dock import RsEditDock

WIDTH, HEIGHT = 60, 50


@pytest.fixture
def dock(qgis_iface, project, tmp_path, fake_backend):
    """A dark 3-band scene (values 20-40, shown unstretched); the fake backend inverts it, so
    the result is bright (215-235)."""
    data = np.full((3, HEIGHT, WIDTH), 20, np.uint8) + (np.arange(WIDTH) % 21).astype(np.uint8)
    path, _data, _gt = make_geotiff(tmp_path / "dark.tif", WIDTH, HEIGHT, bands=3, data=data)
    layer = QgsRasterLayer(str(path), "dark scene")
    layer.setRenderer(QgsMultiBandColorRenderer(layer.dataProvider(), 1, 2, 3))  # no stretch
    project.addMapLayer(layer)
    canvas = qgis_iface.mapCanvas()
    # as in QGIS: the canvas shows the layer tree's visible layers (the result above its source)
    bridge = QgsLayerTreeMapCanvasBridge(project.layerTreeRoot(), canvas)
    to_canvas = QgsCoordinateTransform(layer.crs(), canvas.mapSettings().destinationCrs(), project)
    canvas.setExtent(to_canvas.transformBoundingBox(layer.extent()))
    canvas.refresh()
    widget = RsEditDock(qgis_iface.mainWindow(), qgis_iface)
    widget.layer_combo.setLayer(layer)
    widget.confirm = lambda text: True  # the whole area is edited
    yield widget, layer, canvas
    widget.cleanup()
    wait_for(lambda: all(r.finished for r in widget.jobs.records), 20, "jobs to end")
    widget.deleteLater()
    bridge.deleteLater()
    canvas.setLayers([])


def run_job(widget):
    """Edit the whole scene (an ROI polygon around it) and wait for the result."""
    if not widget.polygon_tool.polygons:
        canvas = widget.canvas()
        layer = widget.layer_combo.currentLayer()
        to_canvas = QgsCoordinateTransform(
            layer.crs(), canvas.mapSettings().destinationCrs(), QgsProject.instance()
        )
        e = layer.extent().buffered(layer.extent().width())
        widget.draw_polygons()
        for x, y in [
            (e.xMinimum(), e.yMinimum()),
            (e.xMaximum(), e.yMinimum()),
            (e.xMaximum(), e.yMaximum()),
            (e.xMinimum(), e.yMaximum()),
        ]:
            widget.polygon_tool.add_point(to_canvas.transform(QgsPointXY(x, y)))
        widget.polygon_tool.finish()
    widget.prompt_edit.setText("brighter")
    record = widget.start_job()
    wait_for(lambda: record.finished, 30, "the job")
    assert record.state == "succeeded" and record.layers
    return record


def shown(canvas, item):
    """What the canvas shows: its layers rendered, the swipe item painted over them."""
    QgsApplication.processEvents()  # the layer tree bridge sets the canvas's layers deferred
    job = QgsMapRendererParallelJob(canvas.mapSettings())
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    if item is not None:
        painter = QPainter(image)
        item.paint(painter)
        painter.end()
    return image


def brightness(image, fx, fy=0.5):
    """The mean of R, G, B at (fx, fy) (fractions of the image's width and height)."""
    color = QColor(image.pixel(int(image.width() * fx), int(image.height() * fy)))
    return (color.red() + color.green() + color.blue()) / 3


def result_span(canvas, result):
    """Where the result lies on the canvas, left to right, as fractions of the width."""
    to_canvas = QgsCoordinateTransform(
        result.crs(), canvas.mapSettings().destinationCrs(), QgsProject.instance()
    )
    extent = to_canvas.transformBoundingBox(result.extent())
    view = canvas.extent()
    return (
        (extent.xMinimum() - view.xMinimum()) / view.width(),
        (extent.xMaximum() - view.xMinimum()) / view.width(),
    )


def test_compare_is_offered_when_a_result_arrives(dock, project):
    widget, layer, canvas = dock
    assert not widget.swipe_check.isEnabled() and not widget.flicker_check.isEnabled()
    assert not widget.swipe_slider.isEnabled()
    canvas.zoomByFactor(4.0)  # zoomed out: the result arrives small in the middle
    record = run_job(widget)
    result = project.mapLayer(record.layers[-1])
    assert widget.swipe_check.isEnabled() and widget.flicker_check.isEnabled()
    assert widget.compare.result is result and widget.compare.source is layer
    assert result.name() in widget.compare_label.text()
    assert not widget.overlays_visible  # the overlays made way for the result
    to_result = QgsCoordinateTransform(canvas.mapSettings().destinationCrs(), result.crs(), project)
    view = to_result.transformBoundingBox(canvas.extent())
    assert view.contains(result.extent())  # zoomed to the result ...
    fits = min(view.width() / result.extent().width(), view.height() / result.extent().height())
    assert fits < 1.2  # ... not left zoomed out


def test_swipe_shows_the_source_left_of_the_line(dock, project):
    widget, _layer, canvas = dock
    record = run_job(widget)
    left, right = result_span(canvas, project.mapLayer(record.layers[-1]))
    assert 0 <= left < 0.5 < right <= 1  # zoomed to the result, the line across it
    at_25, at_75 = left + 0.25 * (right - left), left + 0.75 * (right - left)
    before = shown(canvas, None)
    assert brightness(before, at_25) > 180 and brightness(before, at_75) > 180  # the result

    widget.swipe_check.setChecked(True)
    item = widget.compare.item
    assert item is not None and item.scene() is canvas.scene()
    wait_for(lambda: item.image is not None, 10, "the source's image")
    assert widget.swipe_slider.value() == 50
    assert item.clip_rect().width() == pytest.approx(canvas.mapSettings().outputSize().width() / 2)
    image = shown(canvas, item)
    assert brightness(image, at_25) < 60  # the dark source left of the line
    assert brightness(image, at_75) > 180  # the bright result right of it

    widget.swipe_slider.setValue(round(100 * (at_75 + right) / 2))
    image = shown(canvas, item)
    assert brightness(image, at_25) < 60 and brightness(image, at_75) < 60
    widget.swipe_slider.setValue(0)
    assert item.clip_rect().width() == 0
    image = shown(canvas, item)
    assert brightness(image, at_25) > 180 and brightness(image, at_75) > 180

    widget.swipe_check.setChecked(False)
    assert widget.compare.item is None and item.scene() is None


def test_flicker_switches_the_result_on_and_off(dock, project):
    widget, _layer, _canvas = dock
    record = run_job(widget)
    node = project.layerTreeRoot().findLayer(record.layers[-1])
    seen = []
    node.visibilityChanged.connect(lambda n: seen.append(n.itemVisibilityChecked()))
    widget.flicker_check.setChecked(True)
    assert widget.compare.timer.interval() == FLICKER_MS
    wait_for(lambda: seen[:2] == [False, True], 5, "the result to go off and on again")
    widget.flicker_check.setChecked(False)
    assert not widget.compare.flickering and node.itemVisibilityChecked()


@pytest.mark.parametrize("removed", ["result", "source"])
def test_removing_a_layer_ends_the_compare(dock, project, removed):
    widget, layer, canvas = dock
    record = run_job(widget)
    widget.swipe_check.setChecked(True)
    widget.flicker_check.setChecked(True)
    item = widget.compare.item
    project.removeMapLayer(record.layers[-1] if removed == "result" else layer.id())
    assert not widget.compare.active and widget.compare.item is None and item.scene() is None
    assert not widget.compare.flickering
    assert not widget.swipe_check.isEnabled() and not widget.swipe_check.isChecked()
    assert not widget.flicker_check.isEnabled() and not widget.flicker_check.isChecked()


def test_picking_a_job_compares_its_result(dock, project):
    widget, _layer, _canvas = dock
    first = run_job(widget)
    second = run_job(widget)
    assert widget.compare.result.id() == second.layers[-1]
    widget.job_tree.setCurrentItem(widget._item(first))
    assert widget.compare.result.id() == first.layers[-1]
