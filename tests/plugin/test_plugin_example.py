"""The example image ("make this look like that"): the dock's Example box, the request's
`reference`, `reference_roi` and `reference_weight`, the multipart upload and the Processing
algorithm's REFERENCE parameters, against the loopback fake backend."""

import json

import numpy as np
import pytest
from helpers import ORIGIN, RES, make_geotiff, read, same_crs, wait_for
from osgeo import ogr
from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt

from rs_edit_plugin import jobs, settings
from rs_edit_plugin.dock import RsEditDock
from rs_edit_plugin.processing_provider import RsEditProvider

UTM33 = QgsCoordinateReferenceSystem("EPSG:32633")
UTM14 = QgsCoordinateReferenceSystem("EPSG:32614")
WEB = QgsCoordinateReferenceSystem("EPSG:3857")
WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")
EXAMPLE_ORIGIN = (400_000.0, 4_000_000.0)  # UTM 14N: another scene, far from the source
EXAMPLE_RES = 5.0
# The example area drawn in these tests: pixel corners (column, row) of the example layer.
EXAMPLE_CORNERS = [(10.5, 12.5), (40.5, 12.5), (40.5, 30.5), (10.5, 30.5)]
EXAMPLE_WINDOW = (10, 12, 31, 19)  # its bounding box snapped outwards: xoff, yoff, w, h


def utm33(c, r):
    return QgsPointXY(ORIGIN[0] + c * RES, ORIGIN[1] - r * RES)


def utm14(c, r):
    return QgsPointXY(EXAMPLE_ORIGIN[0] + c * EXAMPLE_RES, EXAMPLE_ORIGIN[1] - r * EXAMPLE_RES)


def example_polygon(corners=EXAMPLE_CORNERS) -> QgsGeometry:
    """The example area in the example layer's CRS (UTM 14N)."""
    return QgsGeometry.fromPolygonXY([[utm14(c, r) for c, r in corners]])


def checkerboard(bands, height, width):
    """A texture unlike the source's smooth ramps: 4 px squares of two colours."""
    rows, cols = np.mgrid[0:height, 0:width]
    board = ((rows // 4 + cols // 4) % 2).astype(np.uint8)
    return np.stack([board * (180 + 20 * b) + 30 for b in range(bands)])


def example_layer(tmp_path, project, name="example", width=80, height=70):
    data = checkerboard(3, height, width)
    path, _data, _gt = make_geotiff(
        tmp_path / f"{name}.tif",
        width=width,
        height=height,
        epsg=32614,
        origin=EXAMPLE_ORIGIN,
        res=EXAMPLE_RES,
        data=data,
    )
    layer = QgsRasterLayer(str(path), name)
    assert layer.isValid()
    project.addMapLayer(layer)
    return layer, data


def polygon_layer(crs: str, geometries, name="example area"):
    layer = QgsVectorLayer(f"Polygon?crs={crs}", name, "memory")
    features = []
    for geometry in geometries:
        feature = QgsFeature()
        feature.setGeometry(geometry)
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)[0]
    return layer


def transformed(geometry, source, target, project) -> QgsGeometry:
    copy = QgsGeometry(geometry)
    copy.transform(QgsCoordinateTransform(source, target, project))
    return copy


def geojson_polygons(text: str) -> tuple[QgsGeometry, dict]:
    """(the union of the polygons, the `crs` member or {}) of GeoJSON text, read by OGR."""
    collection = json.loads(text)
    geometries = []
    for feature in collection["features"]:
        ogr_geometry = ogr.CreateGeometryFromJson(json.dumps(feature["geometry"]))
        geometries.append(QgsGeometry.fromWkt(ogr_geometry.ExportToWkt()))
    return QgsGeometry.unaryUnion(geometries), collection.get("crs") or {}


@pytest.fixture
def dock(qgis_iface, project, tmp_path, fake_backend):
    """The dock on a UTM 33N source layer (60 x 50 px), the whole map extent as the area,
    an ROI square drawn, a prompt typed; the example layer (UTM 14N) is in the project."""
    path, _data, _gt = make_geotiff(tmp_path / "scene.tif", width=60, height=50, bands=3)
    layer = QgsRasterLayer(str(path), "scene")
    project.addMapLayer(layer)
    example, example_data = example_layer(tmp_path, project)
    canvas = qgis_iface.mapCanvas()
    canvas.setLayers([layer])
    to_web = QgsCoordinateTransform(UTM33, WEB, project)
    canvas.setExtent(to_web.transformBoundingBox(QgsRectangle(utm33(5, 40), utm33(45, 5))))
    widget = RsEditDock(qgis_iface.mainWindow(), qgis_iface)
    widget.layer_combo.setLayer(layer)
    widget.confirm = lambda _text: True
    widget.draw_polygons()
    for c, r in [(10.5, 10.5), (20.5, 10.5), (20.5, 20.5), (10.5, 20.5)]:
        widget.polygon_tool.add_point(to_web.transform(utm33(c, r)))
    widget.polygon_tool.finish()
    widget.prompt_edit.setText("rice paddies")
    yield widget, layer, example, example_data
    widget.cleanup()
    wait_for(lambda: all(r.finished for r in widget.jobs.records), 20, "jobs to end")
    widget.deleteLater()


def draw_example(widget, project, corners=EXAMPLE_CORNERS):
    """Draw the example area on the map (in the canvas CRS, EPSG:3857), as a user would."""
    to_web = QgsCoordinateTransform(UTM14, WEB, project)
    widget.example_draw_button.click()
    tool = widget.example_tool
    assert widget.canvas().mapTool() is tool
    for c, r in corners:
        tool.add_point(to_web.transform(utm14(c, r)))
    tool.finish()
    assert widget.canvas().mapTool() is not tool  # back to the tool of before


def test_example_box_exists_and_defaults_to_none(dock):
    widget, _layer, example, _data = dock
    box = widget.findChild(type(widget.example_combo), "exampleLayerCombo")
    assert box is widget.example_combo and widget.body.isAncestorOf(box)
    assert box.allowEmptyLayer() and box.currentLayer() is None
    assert example.id() in [box.layer(i).id() for i in range(box.count()) if box.layer(i)]
    spin = widget.example_weight_spin
    assert (spin.minimum(), spin.maximum(), spin.value()) == (0.0, 1.0, 0.8)
    assert "0 = text only" in spin.toolTip() and "1 = example only" in spin.toolTip()
    for guarded in (box, spin):  # the wheel scrolls past them, as past the other boxes
        assert guarded.focusPolicy() == Qt.FocusPolicy.StrongFocus
    for name in ("drawExampleButton", "selectedExampleButton", "clearExampleButton"):
        assert widget.findChild(type(widget.example_draw_button), name) is not None
    assert widget.example_label.text() == "No example: the prompt alone guides the edit."
    # The area and the weight wait for an example layer.
    assert not widget.example_draw_button.isEnabled() and not spin.isEnabled()
    box.setLayer(example)
    assert widget.example_draw_button.isEnabled() and spin.isEnabled()
    assert widget.example_label.text() == "Example: 80 x 70 px from example (whole layer)."


def test_no_example_no_reference_fields(dock, fake_backend):
    widget, _layer, _example, _data = dock
    request = widget.build_request()
    assert request.example is None and request.reference_path is None
    assert not any(key.startswith("reference") for key in request.form_fields())
    record = widget.start_job()
    wait_for(lambda: record.finished, 30, "the job")
    assert record.state == "succeeded", record.message
    job = fake_backend.jobs[record.job_id]
    assert set(job.files) == {"image", "mask"}  # exactly as before examples existed
    assert not any(key.startswith("reference") for key in job.fields)
    assert not list(request.inputs_dir.glob("*_reference.tif"))


def test_drawn_example_is_exported_and_sent(dock, project, fake_backend, keep_inputs):
    widget, _layer, example, example_data = dock
    widget.example_combo.setLayer(example)
    assert widget.example_label.text() == "Example: 80 x 70 px from example (whole layer)."
    draw_example(widget, project)
    assert widget.example_label.text() == "Example: 31 x 19 px from example."

    record = widget.start_job()
    assert record is not None, fake_backend.requests
    wait_for(lambda: record.finished, 30, "the job")
    assert record.state == "succeeded", record.message
    request = record.request
    xoff, yoff, width, height = EXAMPLE_WINDOW
    window = request.example.window
    assert (window.xoff, window.yoff, window.width, window.height) == EXAMPLE_WINDOW

    # The reference file: the example layer's own pixels, CRS and grid.
    pixels, gt, wkt = read(request.reference_path)
    assert pixels.shape == (3, height, width)
    np.testing.assert_array_equal(
        pixels, example_data[:, yoff : yoff + height, xoff : xoff + width]
    )
    assert same_crs(wkt, example.crs().toWkt())
    x0, y0 = EXAMPLE_ORIGIN[0] + xoff * EXAMPLE_RES, EXAMPLE_ORIGIN[1] - yoff * EXAMPLE_RES
    assert gt == (x0, EXAMPLE_RES, 0.0, y0, 0.0, -EXAMPLE_RES)

    # The example polygons: GeoJSON in the example layer's CRS, named in a `crs` member.
    polygons, crs = geojson_polygons(request.example.roi_geojson)
    assert crs == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32614"}}
    assert polygons.symDifference(example_polygon()).area() < 1e-3  # of 13 500 m²

    # What the backend received: the file part and the form fields.
    job = fake_backend.jobs[record.job_id]
    assert job.files["reference"] == request.reference_path.read_bytes()
    assert job.fields["reference_roi"] == request.example.roi_geojson
    assert float(job.fields["reference_weight"]) == pytest.approx(0.8)
    assert job.files["image"] == request.tile_path.read_bytes()  # the edit itself as before
    # The result layer's metadata names the example.
    assert request.settings_record()["reference"] == "31 x 19 px from example"


def test_whole_layer_example_sends_no_polygons(dock, fake_backend):
    widget, _layer, example, example_data = dock
    widget.example_combo.setLayer(example)
    widget.example_weight_spin.setValue(0.25)
    request = widget.build_request()
    fields = request.form_fields()
    assert "reference_roi" not in fields and fields["reference_weight"] == "0.25"
    jobs.prepare_inputs(request)
    pixels, _gt, wkt = read(request.reference_path)
    np.testing.assert_array_equal(pixels, example_data)
    assert same_crs(wkt, example.crs().toWkt())


def test_example_from_selected_features(dock, project, qgis_iface):
    widget, _layer, example, _data = dock
    widget.example_combo.setLayer(example)
    in_wgs84 = transformed(example_polygon(), UTM14, WGS84, project)
    other = polygon_layer("EPSG:4326", [QgsGeometry.fromRect(QgsRectangle(1, 1, 2, 2))], "other")
    vectors = polygon_layer("EPSG:4326", [in_wgs84])
    project.addMapLayers([vectors, other])
    vectors.selectAll()
    qgis_iface.setActiveLayer(vectors)
    assert widget.example_selected_button.isEnabled()
    widget.example_selected_button.click()
    assert len(widget.example_tool.polygons) == 1  # shown on the map, in the example colour
    example_request = widget.example_request()
    window = example_request.window
    assert (window.xoff, window.yoff, window.width, window.height) == EXAMPLE_WINDOW
    polygons, _crs = geojson_polygons(example_request.roi_geojson)
    assert polygons.symDifference(example_polygon()).area() < 1e-3

    widget.example_clear_button.click()
    assert widget.example_tool.polygons == []
    assert widget.example_request().roi_geojson == ""  # back to the whole layer


def test_nothing_selected_says_so(dock, qgis_iface):
    widget, _layer, _example, _data = dock
    qgis_iface.messageBar().clear_messages()
    assert not widget.use_selected_example()
    warning = qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Warning)[-1]
    assert "no polygon features are selected" in warning


def test_same_layer_is_allowed(dock, project):
    widget, layer, _example, _data = dock
    widget.example_combo.setLayer(layer)  # a patch of the same scene
    to_web = QgsCoordinateTransform(UTM33, WEB, project)
    widget.example_draw_button.click()
    for c, r in [(30.5, 30.5), (50.5, 30.5), (50.5, 45.5)]:
        widget.example_tool.add_point(to_web.transform(utm33(c, r)))
    widget.example_tool.finish()
    request = widget.build_request()
    window = request.example.window
    assert (window.xoff, window.yoff, window.width, window.height) == (30, 30, 21, 16)
    assert request.example.source.gdal_path == request.source.gdal_path
    jobs.prepare_inputs(request)
    assert read(request.reference_path)[0].shape == (3, 16, 21)


def test_geographic_example_layer_gives_rfc7946_geojson(tmp_path, project):
    path, _data, _gt = make_geotiff(
        tmp_path / "geo.tif", width=40, height=30, epsg=4326, origin=(15.0, 45.0), res=1e-4
    )
    layer = QgsRasterLayer(str(path), "geo")
    area_polygon = QgsGeometry.fromRect(QgsRectangle(15.0005, 44.999, 15.002, 44.9995))
    example = jobs.prepare_example(layer, [area_polygon], WGS84, 0.5, project)
    polygons, crs = geojson_polygons(example.roi_geojson)
    assert crs == {}  # RFC 7946: EPSG:4326, longitude first
    assert polygons.symDifference(area_polygon).area() < 1e-12
    assert (example.window.width, example.window.height) == (15, 5)


def test_too_large_example_is_refused_clearly(dock, tmp_path, project, qgis_iface, fake_backend):
    widget, _layer, _example, _data = dock
    path, _data, _gt = make_geotiff(tmp_path / "strip.tif", width=4100, height=4, bands=1)
    strip = QgsRasterLayer(str(path), "strip")
    project.addMapLayer(strip)
    widget.example_combo.setLayer(strip)
    expected = "the example layer is 4100 x 4 px at the resolution of 'strip'"
    assert expected in widget.example_label.text()
    qgis_iface.messageBar().clear_messages()
    assert widget.start_job() is None
    warning = qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Warning)[-1]
    assert expected in warning and "at most 4096 x 4096 px" in warning
    assert fake_backend.jobs == {}
    with pytest.raises(jobs.JobError, match="example weight must be between 0 and 1"):
        jobs.prepare_example(strip, weight=1.5)


def test_example_area_outside_the_example_layer(dock, project):
    widget, _layer, example, _data = dock
    widget.example_combo.setLayer(example)
    draw_example(widget, project, [(200.5, 10.5), (240.5, 10.5), (240.5, 30.5)])
    assert "lies outside the layer 'example'" in widget.example_label.text()
    with pytest.raises(jobs.JobError, match="draw it on that layer"):
        widget.build_request()


def test_weight_is_remembered(dock, qgis_iface):
    widget, _layer, _example, _data = dock
    widget.example_weight_spin.setValue(0.35)
    assert settings.option("example_weight") == pytest.approx(0.35)
    again = RsEditDock(qgis_iface.mainWindow(), qgis_iface)
    try:
        assert again.example_weight_spin.value() == pytest.approx(0.35)
        assert again.example_combo.currentLayer() is None  # the layer is chosen each time
    finally:
        again.cleanup()
        again.deleteLater()


# --- Processing -------------------------------------------------------------------------------


@pytest.fixture
def provider(qgis_processing):
    registry = QgsApplication.processingRegistry()
    instance = RsEditProvider()
    assert registry.addProvider(instance)
    yield instance
    registry.removeProvider(instance)


def test_processing_sends_the_example(provider, project, tmp_path, fake_backend):
    import processing

    path, _data, _gt = make_geotiff(tmp_path / "scene.tif", width=40, height=30, bands=3)
    layer = QgsRasterLayer(str(path), "scene")
    example, example_data = example_layer(tmp_path, project)
    project.addMapLayer(layer)
    second = example_polygon([(50.5, 40.5), (60.5, 40.5), (60.5, 50.5)])
    areas = polygon_layer("EPSG:32614", [example_polygon(), second])  # none selected: all
    project.addMapLayer(areas)
    assert areas.selectedFeatureCount() == 0
    algorithm = provider.algorithm("editraster")
    assert algorithm.parameterDefinition("REFERENCE_WEIGHT").defaultValue() == 0.8
    output = tmp_path / "edited.tif"
    processing.run(
        "rsedit:editraster",
        {
            "INPUT": layer,
            "PROMPT": "rice paddies",
            "EDIT_ALL": True,
            "REFERENCE": example,
            "REFERENCE_ROI": areas,
            "REFERENCE_WEIGHT": 0.5,
            "OUTPUT": str(output),
        },
    )
    assert output.is_file()
    job = next(iter(fake_backend.jobs.values()))
    sent = tmp_path / "sent_reference.tif"
    sent.write_bytes(job.files["reference"])
    pixels, gt, wkt = read(sent)
    # Both polygons' bounding box: columns 10..60, rows 12..50 of the example layer.
    assert pixels.shape == (3, 39, 51)
    np.testing.assert_array_equal(pixels, example_data[:, 12:51, 10:61])
    assert same_crs(wkt, example.crs().toWkt())
    assert gt[0] == EXAMPLE_ORIGIN[0] + 10 * EXAMPLE_RES
    assert float(job.fields["reference_weight"]) == 0.5
    polygons, _crs = geojson_polygons(job.fields["reference_roi"])
    expected = QgsGeometry.unaryUnion([example_polygon(), second])
    assert polygons.symDifference(expected).area() < 1e-3


def test_processing_without_reference_sends_none(provider, project, tmp_path, fake_backend):
    import processing

    path, _data, _gt = make_geotiff(tmp_path / "scene.tif", width=40, height=30, bands=3)
    layer = QgsRasterLayer(str(path), "scene")
    project.addMapLayer(layer)
    areas = polygon_layer("EPSG:32614", [example_polygon()])
    parameters = {"INPUT": layer, "PROMPT": "snow", "EDIT_ALL": True}
    processing.run("rsedit:editraster", {**parameters, "OUTPUT": str(tmp_path / "a.tif")})
    job = next(iter(fake_backend.jobs.values()))
    assert set(job.files) == {"image"}
    assert not any(key.startswith("reference") for key in job.fields)
    with pytest.raises(QgsProcessingException, match="without an example raster"):
        processing.run(
            "rsedit:editraster",
            {**parameters, "REFERENCE_ROI": areas, "OUTPUT": str(tmp_path / "b.tif")},
        )
