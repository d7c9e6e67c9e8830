"""The Processing algorithm runs headless (processing.run), as the toolbox, batch mode and the
model builder run it, against the loopback fake backend."""

import numpy as np
import pytest
from helpers import ORIGIN, RES, make_geotiff, read, same_crs
from qgis.core import (
    QgsApplication,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsRasterLayer,
    QgsVectorLayer,
)

from rs_edit_plugin import settings
from rs_edit_plugin.processing_provider import RsEditProvider


@pytest.fixture
def provider(qgis_processing):
    registry = QgsApplication.processingRegistry()
    instance = RsEditProvider()
    assert registry.addProvider(instance)
    yield instance
    registry.removeProvider(instance)


@pytest.fixture
def inputs(tmp_path, project):
    path, data, gt = make_geotiff(tmp_path / "scene.tif", width=40, height=30, bands=4)
    layer = QgsRasterLayer(str(path), "scene")
    project.addMapLayer(layer)
    roi = QgsVectorLayer("Polygon?crs=EPSG:32633", "roi", "memory")
    feature = QgsFeature()
    ring = [
        QgsPointXY(ORIGIN[0] + c * RES, ORIGIN[1] - r * RES)
        for c, r in [(5.2, 4.1), (15.8, 4.1), (15.8, 12.9), (5.2, 12.9)]
    ]
    feature.setGeometry(QgsGeometry.fromPolygonXY([ring]))
    roi.dataProvider().addFeatures([feature])
    project.addMapLayer(roi)
    return layer, roi, data


def test_algorithm_runs_headless(provider, inputs, fake_backend, tmp_path):
    import processing

    layer, roi, data = inputs
    extent = (
        f"{ORIGIN[0] + 2 * RES},{ORIGIN[0] + 20 * RES},{ORIGIN[1] - 16 * RES},"
        f"{ORIGIN[1] - 1 * RES} [EPSG:32633]"
    )
    output = tmp_path / "out" / "edited.tif"
    result = processing.run(
        "rsedit:editraster",
        {
            "INPUT": layer,
            "EXTENT": extent,
            "ROI": roi,
            "PROMPT": "a flooded field",
            "PRESET": settings.PRESETS.index("tiny"),
            "SEED": 3,
            "CLIP": "tiny-random",
            "OUTPUT": str(output),
        },
    )
    assert result["OUTPUT"] == str(output) and output.is_file()
    edited, gt, wkt = read(output)
    assert edited.shape == (4, 15, 18)
    assert gt == (ORIGIN[0] + 2 * RES, RES, 0.0, ORIGIN[1] - 1 * RES, 0.0, -RES)
    assert same_crs(wkt, layer.crs().toWkt())
    source = data[:, 1:16, 2:20]
    inside = np.zeros((15, 18), bool)
    inside[3:12, 3:14] = True  # rows 4..12 and columns 5..15 of the layer
    np.testing.assert_array_equal(edited[:, ~inside], source[:, ~inside])
    np.testing.assert_array_equal(edited[:, inside], 255 - source[:, inside])
    job = next(iter(fake_backend.jobs.values()))
    assert job.fields["preset"] == "tiny" and job.fields["seed"] == "3"
    assert not list(output.parent.glob("inputs"))  # inputs stay in Processing's temp folder


def test_whole_layer_without_extent_or_roi_and_other_format(
    provider, inputs, fake_backend, tmp_path
):
    import processing

    layer, _roi, data = inputs
    output = tmp_path / "edited.img"  # another GDAL format: converted from the GeoTIFF
    processing.run(
        "rsedit:editraster",
        {
            "INPUT": layer,
            "PROMPT": "snow",
            "PRESET": settings.PRESETS.index("fast"),
            "EDIT_ALL": True,
            "OUTPUT": str(output),
        },
    )
    edited, gt, _wkt = read(output)
    np.testing.assert_array_equal(edited, 255 - data)
    assert gt == (ORIGIN[0], RES, 0.0, ORIGIN[1], 0.0, -RES)


def test_preset_defaults_to_auto(provider, inputs, fake_backend, tmp_path):
    import processing

    algorithm = provider.algorithm("editraster")
    parameter = algorithm.parameterDefinition("PRESET")
    assert parameter.options()[parameter.defaultValue()] == "auto"
    layer, _roi, _data = inputs
    processing.run(
        "rsedit:editraster",
        {
            "INPUT": layer,
            "PROMPT": "snow",
            "EDIT_ALL": True,
            "OUTPUT": str(tmp_path / "edited.tif"),
        },
    )
    job = next(iter(fake_backend.jobs.values()))
    assert job.fields["preset"] == "auto"


def test_whole_layer_and_area_needs_the_explicit_flag(provider, inputs, fake_backend, tmp_path):
    """The defaults (no extent: the whole layer; no ROI: the whole area) would regenerate the
    whole scene: refused with a clear error unless EDIT_ALL is set."""
    import processing

    layer, _roi, _data = inputs
    algorithm = provider.algorithm("editraster")
    assert algorithm.parameterDefinition("EDIT_ALL").defaultValue() is False
    big = QgsVectorLayer("Polygon?crs=EPSG:32633", "big", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(layer.extent().buffered(-2 * RES)))
    big.dataProvider().addFeatures([feature])  # 36 x 26 of 40 x 30 px: 78 %
    for roi in (None, big):
        parameters = {"INPUT": layer, "PROMPT": "snow", "OUTPUT": str(tmp_path / "e.tif")}
        if roi is not None:
            parameters["ROI"] = roi
        with pytest.raises(QgsProcessingException, match="EDIT_ALL"):
            processing.run("rsedit:editraster", parameters)
    assert fake_backend.jobs == {}


def test_backend_errors_become_processing_errors(provider, inputs, fake_backend, tmp_path):
    import processing

    layer, roi, _data = inputs
    fake_backend.behaviour["submit_error"] = (400, "prompt is too long (1001 > 1000 chars)")
    with pytest.raises(QgsProcessingException, match="prompt is too long"):
        processing.run(
            "rsedit:editraster",
            {"INPUT": layer, "ROI": roi, "PROMPT": "x", "OUTPUT": str(tmp_path / "o.tif")},
        )
