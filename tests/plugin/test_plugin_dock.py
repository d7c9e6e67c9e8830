"""The dock end to end: choose layer, bands, area and ROI, run, watch, cancel, add result."""

import pytest
from helpers import ORIGIN, RES, make_geotiff, wait_for
from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsGeometry,
    QgsMultiBandColorRenderer,
    QgsPointXY,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtWidgets import QPlainTextEdit

from rs_edit_plugin import area, results, settings
from rs_edit_plugin.dock import RsEditDock

UTM = QgsCoordinateReferenceSystem("EPSG:32633")
WEB = QgsCoordinateReferenceSystem("EPSG:3857")


def utm(c, r):
    return QgsPointXY(ORIGIN[0] + c * RES, ORIGIN[1] - r * RES)


@pytest.fixture
def dock(qgis_iface, project, tmp_path, fake_backend):
    path, _data, _gt = make_geotiff(tmp_path / "scene.tif", width=60, height=50, bands=4)
    layer = QgsRasterLayer(str(path), "scene")
    layer.setRenderer(QgsMultiBandColorRenderer(layer.dataProvider(), 4, 3, 2))
    project.addMapLayer(layer)
    canvas = qgis_iface.mapCanvas()
    canvas.setLayers([layer])
    to_web = QgsCoordinateTransform(UTM, WEB, project)
    canvas.setExtent(to_web.transformBoundingBox(QgsRectangle(utm(5, 40), utm(45, 5))))
    canvas.refresh()
    widget = RsEditDock(qgis_iface.mainWindow(), qgis_iface)
    widget.layer_combo.setLayer(layer)
    widget.asked = []  # what the dock asked the user; answered "Yes"
    widget.confirm = lambda text: widget.asked.append(text) or True
    yield widget, layer, to_web
    widget.cleanup()
    wait_for(lambda: all(r.finished for r in widget.jobs.records), 20, "jobs to end")
    widget.deleteLater()


def draw_square(widget, to_web):
    widget.draw_polygons()
    tool = widget.polygon_tool
    assert widget.canvas().mapTool() is tool
    for c, r in [(10.5, 10.5), (20.5, 10.5), (20.5, 20.5), (10.5, 20.5)]:
        tool.add_point(to_web.transform(utm(c, r)))
    tool.finish()


def test_band_choice_for_multiband_layers(dock):
    widget, _layer, _to_web = dock
    assert widget.band_row.isEnabled()
    assert [c.currentBand() for c in widget.band_combos] == [4, 3, 2]  # from the style
    assert widget.rgb_bands() == [4, 3, 2]


def test_preset_defaults_to_auto(dock):
    # "auto" lets the backend pick the preset for its device (fast on a CPU, balanced on a GPU).
    widget, _layer, _to_web = dock
    combo = widget.preset_combo
    offered = [combo.itemText(i) for i in range(combo.count())]
    assert offered == list(settings.PRESETS) and offered[0] == "auto"
    assert {"tiny", "fast", "balanced", "quality"} <= set(offered)
    assert settings.DEFAULT_PRESET == "auto" and combo.currentText() == "auto"


def test_run_from_the_dock_adds_the_result(dock, project, fake_backend, qgis_iface):
    widget, layer, to_web = dock
    draw_square(widget, to_web)
    assert widget.roi_label.text().startswith("1 polygon")
    widget.prompt_edit.setText("  flooded   fields ")
    widget.preset_combo.setCurrentText("tiny")
    widget.seed_spin.setValue(11)
    widget.clip_combo.setCurrentText("tiny-random")
    extent = widget.canvas().extent()  # the area; the map zooms to the result when it arrives
    widget.run_button.click()

    assert widget.job_tree.topLevelItemCount() == 1
    record = widget.jobs.records[0]
    wait_for(lambda: record.finished, 30, "the job")
    assert record.state == "succeeded", record.message
    item = widget.job_tree.topLevelItem(0)
    assert item.text(0) == "scene – flooded fields"
    assert item.text(1).startswith("succeeded") and item.text(2) == "succeeded"
    job = fake_backend.jobs[record.job_id]
    assert job.fields["rgb_bands"] == "4,3,2" and job.fields["seed"] == "11"
    assert job.fields["prompt"] == "flooded fields"
    window = record.request.window
    # The area is the map extent (in EPSG:3857) on the layer's grid.
    canvas = widget.canvas()
    assert window == area.window_for_extent(layer, extent, WEB)
    assert canvas.mapSettings().destinationCrs() == WEB and window.width >= 40
    group = project.layerTreeRoot().findGroup(results.GROUP_NAME)
    assert [n.layer().name() for n in group.findLayers()] == ["scene – flooded fields (v1)"]
    # The options are remembered.
    assert settings.option("preset") == "tiny" and settings.option("seed") == 11
    assert record.scene_outputs == []  # full-scene outputs are off by default
    assert not list(record.outputs[0].parent.glob("*_scene_*"))

    assert widget.add_button.isEnabled() and not widget.cancel_button.isEnabled()
    widget.add_button.click()
    assert len(group.findLayers()) == 2

    # The backend's warning (tiny-random: random CLIP weights) and report, from the row.
    assert "(1 warning(s))" in item.text(1)
    assert "random weights" in item.toolTip(0) and "CLIP similarity after" in item.toolTip(0)
    actions = {text: enabled for text, _slot, enabled in widget.job_actions(record)}
    assert actions["Details…"] and actions["Add result to map"] and not actions["Cancel"]
    dialog = widget.show_details(record)
    text = dialog.findChild(QPlainTextEdit, "jobDetailsText").toPlainText()
    assert "random weights" in text and "clip_similarity_input" in text
    dialog.close()


def test_cancel_button(dock, fake_backend):
    widget, _layer, to_web = dock
    fake_backend.behaviour["hang"] = True
    widget.roi_combo.setCurrentIndex(widget.roi_combo.findData("whole"))
    widget.prompt_edit.setText("a new road")
    record = widget.start_job()
    wait_for(lambda: record.state == "running", 20, "the job to run")
    assert widget.cancel_button.isEnabled()
    widget.cancel_button.click()
    wait_for(lambda: record.finished, 20, "the cancelled job")
    assert record.state == "cancelled" and fake_backend.deleted == [record.job_id]
    assert widget.job_tree.topLevelItem(0).text(1) == "cancelled"
    assert fake_backend.jobs[record.job_id].mask is None  # whole area: no mask sent


def test_whole_area_edits_are_confirmed_first(dock, fake_backend):
    """Map extent + "The whole area": the whole tile would be regenerated; the dock asks."""
    widget, _layer, to_web = dock
    widget.prompt_edit.setText("a new road")
    widget.roi_combo.setCurrentIndex(widget.roi_combo.findData("whole"))
    widget.confirm = lambda text: widget.asked.append(text) or False  # "No"
    assert widget.start_job() is None and not fake_backend.jobs
    assert len(widget.asked) == 1
    assert "whole area sent" in widget.asked[0] and "px of scene" in widget.asked[0]
    assert "there is no ROI" in widget.asked[0]

    draw_square(widget, to_web)  # 10 x 10 px of a 40 x 35 px area: no question
    widget.asked.clear()
    record = widget.start_job()
    assert record is not None and widget.asked == []
    assert record.request.roi_share() < 0.1
    widget.jobs.cancel(record)


def test_problems_are_reported_before_a_job_starts(dock, qgis_iface, project):
    widget, _layer, _to_web = dock
    widget.prompt_edit.setText("forest")
    assert widget.start_job() is None  # no polygon drawn yet
    warnings = qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Warning)
    assert warnings and "draw ROI polygons" in warnings[-1]

    widget.roi_combo.setCurrentIndex(widget.roi_combo.findData("selected"))
    footprints = QgsVectorLayer("Polygon?crs=EPSG:32633", "buildings", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(utm(12, 14), utm(14, 12))))
    footprints.dataProvider().addFeatures([feature])
    project.addMapLayer(footprints)
    widget.roi_layer_combo.setLayer(footprints)
    assert widget.start_job() is None
    assert (
        "no features are selected"
        in qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Warning)[-1]
    )
    footprints.selectAll()
    widget.area_combo.setCurrentIndex(widget.area_combo.findData("selection"))
    settings.QgsSettings().setValue(settings.MAX_TILE_PIXELS_KEY, 3)
    assert widget.start_job() is None  # the selection's extent is 2 x 2 px > 3 px
    assert "at most" in qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Warning)[-1]
    settings.QgsSettings().remove(settings.MAX_TILE_PIXELS_KEY)
    record = widget.start_job()
    assert record is not None
    wait_for(lambda: record.finished, 30, "the job")
    assert record.state == "succeeded", record.message
    # The selection's 2 x 2 px box with context around it: here the whole 60 x 50 px raster.
    window = record.request.window
    assert (window.xoff, window.yoff, window.width, window.height) == (0, 0, 60, 50)


def test_rectangle_drawn_on_the_map_is_the_area(dock, qgis_iface):
    from qgis.core import QgsPointXY as Point
    from qgis.gui import QgsMapMouseEvent
    from qgis.PyQt.QtCore import QEvent, QPoint, Qt

    widget, layer, to_web = dock
    widget.draw_rectangle()
    tool = widget.rectangle_tool
    canvas = widget.canvas()
    assert canvas.mapTool() is tool
    corners = [to_web.transform(utm(10.5, 20.5)), to_web.transform(utm(30.5, 8.5))]
    for kind, point in (
        (QEvent.Type.MouseButtonPress, corners[0]),
        (QEvent.Type.MouseMove, corners[1]),
        (QEvent.Type.MouseButtonRelease, corners[1]),
    ):
        event = QgsMapMouseEvent(canvas, kind, QPoint(0, 0), Qt.MouseButton.LeftButton)
        event.setMapPoint(Point(point))
        {
            QEvent.Type.MouseButtonPress: tool.canvasPressEvent,
            QEvent.Type.MouseMove: tool.canvasMoveEvent,
            QEvent.Type.MouseButtonRelease: tool.canvasReleaseEvent,
        }[kind](event)
    assert widget.area_combo.currentData() == "rectangle"
    extent, crs = widget.area_extent()
    assert crs == WEB
    window = area.window_for_extent(layer, extent, crs)
    assert (window.xoff, window.yoff, window.width, window.height) == (10, 8, 21, 13)
    canvas.unsetMapTool(tool)


def test_drawing_returns_to_the_map_tool_used_before(dock):
    """After a finished polygon or rectangle, the map tool in use before (pan, say) is back;
    an unfinished polygon keeps the polygon tool."""
    from qgis.gui import QgsMapToolPan

    widget, _layer, to_web = dock
    canvas = widget.canvas()
    pan = QgsMapToolPan(canvas)
    canvas.setMapTool(pan)
    widget.draw_polygons()
    tool = widget.polygon_tool
    assert canvas.mapTool() is tool
    tool.add_point(to_web.transform(utm(10.5, 10.5)))
    tool.add_point(to_web.transform(utm(20.5, 10.5)))
    assert tool.finish() is None  # two vertices: no polygon, keep drawing
    assert canvas.mapTool() is tool
    tool.add_point(to_web.transform(utm(20.5, 20.5)))
    assert tool.finish() is not None
    assert canvas.mapTool() is pan and len(tool.polygons) == 1

    # The rectangle, and a drawing tool chosen while another one is active: still pan after.
    widget.draw_polygons()
    widget.draw_rectangle()
    assert canvas.mapTool() is widget.rectangle_tool
    rect = QgsRectangle(to_web.transform(utm(10.5, 20.5)), to_web.transform(utm(30.5, 8.5)))
    widget.rectangle_tool.rectangleDrawn.emit(rect, WEB)
    assert canvas.mapTool() is pan and widget.area_combo.currentData() == "rectangle"

    # No map tool before: the drawing tool is unset.
    canvas.unsetMapTool(pan)
    widget.draw_polygons()
    for c, r in [(30.5, 30.5), (40.5, 30.5), (40.5, 40.5)]:
        tool.add_point(to_web.transform(utm(c, r)))
    tool.finish()
    assert canvas.mapTool() is None and len(tool.polygons) == 2


def test_three_band_layers_let_the_backend_choose(dock, project, tmp_path):
    widget, _layer, _to_web = dock
    path, _data, _gt = make_geotiff(tmp_path / "rgb.tif", width=10, height=10, bands=3)
    rgb = QgsRasterLayer(str(path), "rgb")
    project.addMapLayer(rgb)
    widget.layer_combo.setLayer(rgb)
    assert not widget.band_row.isEnabled() and widget.rgb_bands() is None
    # The backend takes bands 1, 2, 3 as red, green, blue: that is what the combos show.
    assert [c.currentBand() for c in widget.band_combos] == [1, 2, 3]
    widget.layer_combo.setLayer(_layer)  # back to the 4-band layer: its style's choice
    assert widget.band_row.isEnabled() and widget.rgb_bands() == [4, 3, 2]


def test_roi_label_follows_the_source_layer(dock, project, tmp_path):
    widget, layer, to_web = dock
    draw_square(widget, to_web)
    rect = QgsRectangle(to_web.transform(utm(10.5, 20.5)), to_web.transform(utm(30.5, 8.5)))
    widget.set_rectangle(rect, WEB)
    text = widget.roi_label.text()
    assert "1 polygon(s) drawn, 1 on scene." in text
    assert "Rectangle: 21 x 13 px of scene." in text and "map units" not in text
    # The area as sent, in pixels of the source, with the ROI's pixels as the mask counts
    # them (the square drawn in EPSG:3857 covers 95 pixel centres of the UTM grid).
    assert widget.area_label.text() == "Area 21 x 13 px of scene, ROI 95 px (34.8 %)."
    # Another raster: half the resolution, elsewhere (nothing of the ROI lies on it).
    path, _data, _gt = make_geotiff(
        tmp_path / "coarse.tif",
        width=10,
        height=10,
        res=RES * 2,
        origin=(ORIGIN[0] + 60 * RES, ORIGIN[1]),
    )
    coarse = QgsRasterLayer(str(path), "coarse")
    project.addMapLayer(coarse)
    widget.layer_combo.setLayer(coarse)
    text = widget.roi_label.text()
    assert "1 polygon(s) drawn, 0 on coarse." in text and "Rectangle: outside coarse." in text
    assert widget.area_label.text().startswith("Area: the area does not overlap layer")
    widget.layer_combo.setLayer(layer)
    assert "Rectangle: 21 x 13 px of scene." in widget.roi_label.text()
    assert widget.area_label.text() == "Area 21 x 13 px of scene, ROI 95 px (34.8 %)."


def test_area_label_is_live(dock, project, qgis_iface):
    """The area label follows the area and ROI sources, the map extent and the selection."""
    from helpers import wait_for

    widget, layer, to_web = dock
    assert widget.area_combo.currentData() == "extent"
    label = widget.area_label
    canvas = widget.canvas()
    window = area.window_for_extent(layer, canvas.extent(), WEB)
    size = f"Area {window.width} x {window.height} px of scene"
    assert label.text().startswith(f"{size}; ROI: draw ROI polygons")
    widget.roi_combo.setCurrentIndex(widget.roi_combo.findData("whole"))
    assert label.text() == f"{size}, ROI the whole area ({window.pixels} px, 100 %)."
    canvas.setExtent(to_web.transformBoundingBox(QgsRectangle(utm(0, 20), utm(20, 0))))
    window = area.window_for_extent(layer, canvas.extent(), WEB)
    assert window.pixels < 40 * 30
    size = f"Area {window.width} x {window.height} px of scene"
    wait_for(lambda: label.text().startswith(size), 5, "the label after a pan")

    footprints = QgsVectorLayer("Polygon?crs=EPSG:32633", "fields", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(utm(20, 30), utm(30, 20))))
    footprints.dataProvider().addFeatures([feature])
    project.addMapLayer(footprints)
    canvas.setLayers([footprints, layer])
    widget.roi_layer_combo.setLayer(footprints)
    widget.roi_combo.setCurrentIndex(widget.roi_combo.findData("selected"))
    widget.area_combo.setCurrentIndex(widget.area_combo.findData("selection"))
    assert label.text().startswith("Area: no features are selected")
    footprints.selectAll()
    # The 10 x 10 px selection with its context: the whole 60 x 50 px raster.
    wait_for(lambda: "ROI 100 px" in label.text(), 5, "the label after a selection")
    assert label.text() == "Area 60 x 50 px of scene, ROI 100 px (3.33 %)."


def test_band_combos_show_the_layers_band_names(dock, project, tmp_path):
    """Three disabled "Band 1 (Red)" combos for an RGB layer: the combos show the bands as
    the file names them, in the order the backend takes them."""
    from osgeo import gdal

    widget, layer, _to_web = dock
    names = [widget.band_combos[0].itemText(i) for i in range(widget.band_combos[0].count())]
    # The file's descriptions, with GDAL's colour interpretation (RGBA for 4 Byte bands).
    assert names == [
        "1: band 1 (Red)",
        "2: band 2 (Green)",
        "3: band 3 (Blue)",
        "4: band 4 (Alpha)",
    ]
    assert [c.currentBand() for c in widget.band_combos] == [4, 3, 2]
    assert widget.band_combos[0].currentText() == "4: band 4 (Alpha)"

    path = tmp_path / "rgb.tif"
    dataset = gdal.GetDriverByName("GTiff").Create(
        str(path), 8, 8, 3, gdal.GDT_Byte, ["PHOTOMETRIC=RGB"]
    )
    dataset.SetGeoTransform((ORIGIN[0], RES, 0, ORIGIN[1], 0, -RES))
    dataset.GetRasterBand(1).SetDescription("B04")
    dataset = None
    rgb = QgsRasterLayer(str(path), "rgb")
    project.addMapLayer(rgb)
    widget.layer_combo.setLayer(rgb)
    assert [c.currentText() for c in widget.band_combos] == ["1: B04 (Red)", "2: Green", "3: Blue"]
    assert not widget.band_row.isEnabled() and "in order" in widget.band_row.toolTip()


def test_job_rows_tell_jobs_apart(dock, fake_backend):
    from rs_edit_plugin.tasks import JobRecord, stage_label

    widget, _layer, _to_web = dock
    fake_backend.behaviour["fail_with"] = "CUDA out of memory"
    widget.roi_combo.setCurrentIndex(widget.roi_combo.findData("whole"))
    widget.prompt_edit.setText("a new road")
    record = widget.start_job()
    wait_for(lambda: record.finished, 30, "the failing job")
    item = widget.job_tree.topLevelItem(0)
    assert item.text(0) == "scene – a new road"
    assert item.text(1) == "failed: CUDA out of memory"
    assert item.text(2) == "failed"  # an end state, not the last percentage

    assert stage_label("synthesize") == "drawing the edit"
    assert [stage_label(s) for s in ("detail", "guard", "windows", "finetune")] == [
        "adding detail",
        "checking realism",
        "editing windows",
        "fine-tuning",
    ]
    assert stage_label("something new") == "something new"
    running = JobRecord(99, "a new road", record.request, state="running", stage="guard")
    running.progress = 42.4
    assert widget.job_row(running) == ["scene – a new road", "checking realism", "42%"]


def wheel_down(widget):
    """A mouse-wheel notch over the widget (down), as QGIS would deliver it."""
    from qgis.PyQt.QtCore import QPoint, QPointF, Qt
    from qgis.PyQt.QtGui import QWheelEvent
    from qgis.PyQt.QtWidgets import QApplication

    pos = QPointF(widget.rect().center())
    event = QWheelEvent(
        pos,
        QPointF(widget.mapToGlobal(pos.toPoint())),
        QPoint(0, 0),
        QPoint(0, -120),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(widget, event)
    return event


def test_wheel_scrolls_past_combos_and_spin_boxes(dock):
    """Issue 16: scrolling the dock over the Preset combo turned `tiny` into `quality`."""
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtWidgets import QAbstractSpinBox, QComboBox

    widget, _layer, _to_web = dock
    widget.preset_combo.setCurrentText("tiny")
    widget.variants_spin.setValue(2)
    boxes = widget.findChildren(QComboBox) + widget.findChildren(QAbstractSpinBox)
    names = {box.objectName() for box in boxes}
    assert {"presetCombo", "layerCombo", "areaCombo", "roiCombo", "llmCombo"} <= names
    assert {"redBandCombo", "variantsSpin", "seedSpin", "clipCombo"} <= names
    for box in boxes:
        assert box.focusPolicy() == Qt.FocusPolicy.StrongFocus, box.objectName()
        assert not box.hasFocus()
        before = box.currentIndex() if isinstance(box, QComboBox) else box.value()
        event = wheel_down(box)
        after = box.currentIndex() if isinstance(box, QComboBox) else box.value()
        assert after == before, box.objectName()
        assert not event.isAccepted(), box.objectName()  # left to the dock's scroll area
    assert widget.preset_combo.currentText() == "tiny"
    assert widget.variants_spin.value() == 2


def test_wheel_still_changes_a_focused_combo(dock):
    widget, _layer, _to_web = dock
    combo = widget.preset_combo
    combo.setCurrentIndex(0)
    combo.hasFocus = lambda: True  # offscreen windows never get focus; the guard asks this
    wheel_down(combo)
    assert combo.currentIndex() == 1


def test_dock_opens_wide_enough_for_its_form(dock, qgis_iface):
    """QGIS opened the dock 298 px wide for 519 px of content: fields cut off."""
    from qgis.PyQt.QtCore import QCoreApplication, Qt

    widget, _layer, _to_web = dock
    qgis_iface.mainWindow().addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, widget)
    widget.show()
    widget.resize(150, 700)  # as narrow as a user (or QGIS's saved state) may make it
    QCoreApplication.processEvents()
    scroll = widget.widget()
    need = widget.body.minimumSizeHint().width()
    assert need < 450  # long combo items and labels wrap instead of widening the dock
    assert widget.width() >= need and scroll.viewport().width() >= need
    assert widget.body.width() >= need  # nothing cut off
    assert scroll.horizontalScrollBarPolicy() == Qt.ScrollBarPolicy.ScrollBarAlwaysOff
    # The job list is reachable: in the scrolled form, below the Edit button.
    assert widget.body.isAncestorOf(widget.job_tree)
    qgis_iface.mainWindow().removeDockWidget(widget)


def test_overlays_make_way_for_the_result_and_can_be_cleared(dock, project, fake_backend):
    """The red ROI polygons and the blue area tint covered the edited pixels, and the tint
    could not be removed at all."""
    widget, _layer, to_web = dock
    draw_square(widget, to_web)
    rect = to_web.transformBoundingBox(QgsRectangle(utm(8, 25), utm(30, 6)))
    widget.rectangle_tool.band.setToGeometry(QgsGeometry.fromRect(rect), WEB)  # as dragged
    widget.set_rectangle(rect, WEB)
    polygons, tint = widget.polygon_tool.shown, widget.rectangle_tool.band
    assert polygons.isVisible() and tint.isVisible() and tint.numberOfVertices() > 0
    widget.prompt_edit.setText("flooded fields")
    record = widget.start_job()
    wait_for(lambda: record.finished, 30, "the job")
    assert record.state == "succeeded" and record.layers
    assert not polygons.isVisible() and not tint.isVisible()  # the result shows
    assert widget.overlay_button.text() == "Show overlays"
    assert len(widget.polygon_tool.polygons) == 1  # kept for the next job
    widget.overlay_button.click()
    assert polygons.isVisible() and tint.isVisible()

    widget.clear_button.click()
    assert widget.polygon_tool.polygons == [] and widget.rectangle is None
    assert tint.numberOfVertices() == 0 and polygons.numberOfVertices() == 0


def test_job_list_comes_back_from_the_backend(dock, fake_backend, qgis_iface):
    """After a restart of QGIS (a new dock), the list shows the backend's jobs (GET /v1/jobs)
    with their state, prompt and report; listed jobs that still run are followed and can be
    cancelled; listing again (the dock opens again) adds no duplicate; another backend URL
    lists that backend's jobs too."""
    from fake_backend import FakeBackend, Job

    before, layer, _to_web = dock  # the dock of the session before the restart
    before.roi_combo.setCurrentIndex(before.roi_combo.findData("whole"))
    before.prompt_edit.setText("flooded fields")
    done = before.start_job()
    wait_for(lambda: done.finished, 30, "the first job")
    assert done.state == "succeeded", done.message
    fake_backend.behaviour["hang"] = True
    before.prompt_edit.setText("a new road")
    running = before.start_job()
    wait_for(lambda: running.state == "running", 20, "the second job to run")
    fake_backend.jobs[running.job_id].polls_to_finish = 10**9  # runs on and on

    fake_backend.behaviour["warnings"] = ["the LLM was not reachable"]
    widget = RsEditDock(qgis_iface.mainWindow(), qgis_iface)  # QGIS started again
    try:
        widget.layer_combo.setLayer(layer)
        widget.confirm = lambda _text: True
        assert widget.job_tree.topLevelItemCount() == 0
        loaded = []
        widget.jobs.historyLoaded.connect(loaded.append)
        widget._visibility_changed(True)  # the dock opens
        wait_for(lambda: loaded, 10, "the job list")
        assert loaded == [2] and widget.jobs.history_error == ""
        tree = widget.job_tree
        rows = [tree.topLevelItem(i) for i in range(tree.topLevelItemCount())]
        assert [(r.text(0), r.text(2)) for r in rows] == [
            ("a new road", "50%"),
            ("flooded fields", "succeeded"),
        ]
        listed_done = widget.jobs.records[1]
        assert listed_done.listed and listed_done.job_id == done.job_id
        assert listed_done.warnings == ["the LLM was not reachable"]
        assert listed_done.report["clip_similarity_edits"] == [0.2745]
        assert "(1 warning(s))" in rows[1].text(1)
        tree.setCurrentItem(rows[1])
        assert not widget.add_button.isEnabled()  # nothing downloaded in this session

        # A job of this session comes first; listed again (the dock opens again): no
        # duplicate.
        fake_backend.behaviour["hang"] = False
        widget.roi_combo.setCurrentIndex(widget.roi_combo.findData("whole"))
        widget.prompt_edit.setText("burnt forest")
        record = widget.start_job()
        wait_for(lambda: record.finished, 30, "this session's job")
        assert record.state == "succeeded", record.message
        loaded.clear()
        widget._visibility_changed(False)
        widget._visibility_changed(True)
        wait_for(lambda: loaded == [3], 10, "the job list again")
        assert tree.topLevelItemCount() == 3
        assert tree.topLevelItem(0).text(0) == "scene – burnt forest"

        # The listed job still running: followed, and cancelled from the list.
        listed_running = next(r for r in widget.jobs.records if r.job_id == running.job_id)
        assert listed_running.listed and widget.jobs.history_timer.isActive()
        tree.setCurrentItem(tree.topLevelItem(1))
        assert widget.selected_record() is listed_running and widget.cancel_button.isEnabled()
        widget.cancel_button.click()
        wait_for(lambda: listed_running.finished, 10, "the listed job's cancel")
        assert listed_running.state == "cancelled"
        assert fake_backend.deleted == [running.job_id]
        assert tree.topLevelItem(1).text(2) == "cancelled"
        wait_for(lambda: running.finished, 10, "the earlier session's runner")  # it saw that
        widget._visibility_changed(False)
        assert not widget.jobs.history_timer.isActive()

        # Another backend URL set: its jobs are listed too.
        other = FakeBackend().start()
        try:
            other.jobs["elsewhere1"] = Job("elsewhere1", {"prompt": "dry lake"}, b"", None, 1, 1)
            other.jobs["elsewhere1"].status = "failed"
            loaded.clear()
            widget.url_edit.setText(other.url)
            widget.save_url()
            wait_for(lambda: loaded == [1], 10, "the other backend's job list")
            assert tree.topLevelItemCount() == 4
            assert (tree.topLevelItem(3).text(0), tree.topLevelItem(3).text(2)) == (
                "dry lake",
                "failed",
            )
            assert widget.jobs.records[-1].backend == other.url
        finally:
            other.stop()
    finally:
        widget.cleanup()
        widget.deleteLater()


def test_full_scene_outputs_from_the_dock(dock, fake_backend, keep_inputs):
    """Off by default; ticked, the results folder gets the pre/post/mask set on the source's
    grid: post is the source except in the edited window, where it is the returned tile."""
    import numpy as np
    from helpers import read

    from rs_edit_plugin import scene

    widget, layer, to_web = dock
    assert not widget.scene_check.isChecked() and settings.option("full_scene") is False
    widget.scene_check.setChecked(True)
    assert settings.option("full_scene") is True
    draw_square(widget, to_web)
    widget.prompt_edit.setText("flooded fields")
    record = widget.start_job()
    wait_for(lambda: record.finished, 30, "the job")
    assert record.state == "succeeded", record.message
    request, (tile_path,) = record.request, record.outputs
    pre, (post,), mask = scene.scene_paths(request.out_stem, record.outputs)
    assert record.scene_outputs == [pre, post, mask]
    assert "with 3 full-scene file(s)" in record.message
    assert not any("full-scene" in w for w in record.warnings)

    source, source_gt, source_wkt = read(layer.source())
    tile, tile_gt, _wkt = read(tile_path)
    window = request.window
    rows = slice(window.yoff, window.yoff + window.height)
    cols = slice(window.xoff, window.xoff + window.width)
    after, after_gt, after_wkt = read(post)
    assert after.dtype == source.dtype and after.shape == source.shape
    assert after_gt == source_gt and after_wkt == source_wkt and tile_gt == window.geotransform
    expected = source.copy()
    expected[:, rows, cols] = tile
    np.testing.assert_array_equal(after, expected)
    assert not np.array_equal(after, source)  # the edit is in it
    np.testing.assert_array_equal(read(pre)[0], source)
    sent_mask, _gt, _wkt = read(request.mask_path)
    full_mask, mask_gt, _wkt = read(mask)
    assert mask_gt == source_gt and full_mask[0, rows, cols].tolist() == sent_mask[0].tolist()
    assert full_mask.sum() == sent_mask.sum() > 0


def test_random_clip_weights_are_said_loudly(dock):
    """tiny-random guides by random weights: a red warning shows while it is the CLIP chosen."""
    dock, _layer, _to_web = dock
    dock.clip_combo.setCurrentIndex(dock.clip_combo.findData("tiny-random"))
    assert not dock.random_clip_label.isHidden()
    assert "RANDOM weights" in dock.random_clip_label.text()
    dock.clip_combo.setCurrentIndex(dock.clip_combo.findData("RemoteCLIP-ViT-B-32"))
    assert dock.random_clip_label.isHidden()
    dock.clip_combo.setEditText("tiny-random")  # typed, not picked
    assert not dock.random_clip_label.isHidden()
