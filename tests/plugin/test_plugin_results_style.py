"""A result layer renders with its source layer's renderer settings (rs_edit_plugin/results.py):
band mapping, min/max and stretch per band, never a stretch recomputed from the result's own
pixels (in the swipe compare that made unchanged pixels look darker or brighter)."""

import numpy as np
import pytest
from helpers import make_geotiff, pixels
from qgis.core import (
    QgsContrastEnhancement,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsMultiBandColorRenderer,
    QgsRasterLayer,
    QgsRasterMinMaxOrigin,
    QgsRectangle,
    QgsSingleBandGrayRenderer,
)
from qgis.PyQt.QtCore import QSize

from rs_edit_plugin import results

WIDTH, HEIGHT = 60, 50
# The ROI: a small block whose values are extreme (0 and 255); everything else as the source.
ROI = (slice(20, 26), slice(30, 38))


def enhancement(provider, band, lo, hi, algorithm):
    ce = QgsContrastEnhancement(provider.dataType(band))
    ce.setContrastEnhancementAlgorithm(algorithm)
    ce.setMinimumValue(lo)
    ce.setMaximumValue(hi)
    return ce


def stretched_by_cumulative_cut(renderer):
    """The origin QGIS gives a default-styled layer: its min/max would be recomputed."""
    origin = QgsRasterMinMaxOrigin()
    origin.setLimits(QgsRasterMinMaxOrigin.Limits.CumulativeCut)
    origin.setExtent(QgsRasterMinMaxOrigin.Extent.WholeRaster)
    renderer.setMinMaxOrigin(origin)


def rgb_source(path):
    """A 3-band layer shown as bands 3, 1, 2 with a stretch of its own per band."""
    layer = QgsRasterLayer(str(path), "source")
    assert layer.isValid()
    provider = layer.dataProvider()
    renderer = QgsMultiBandColorRenderer(provider, 3, 1, 2)
    stretch = QgsContrastEnhancement.ContrastEnhancementAlgorithm.StretchToMinimumMaximum
    clip = QgsContrastEnhancement.ContrastEnhancementAlgorithm.ClipToMinimumMaximum
    renderer.setRedContrastEnhancement(enhancement(provider, 3, 40, 180, stretch))
    renderer.setGreenContrastEnhancement(enhancement(provider, 1, 25, 210, clip))
    renderer.setBlueContrastEnhancement(enhancement(provider, 2, 60, 120, stretch))
    stretched_by_cumulative_cut(renderer)
    layer.setRenderer(renderer)
    return layer


def gray_source(path):
    layer = QgsRasterLayer(str(path), "source")
    assert layer.isValid()
    provider = layer.dataProvider()
    renderer = QgsSingleBandGrayRenderer(provider, 1)
    stretch = QgsContrastEnhancement.ContrastEnhancementAlgorithm.StretchToMinimumMaximum
    renderer.setContrastEnhancement(enhancement(provider, 1, 70, 140, stretch))
    stretched_by_cumulative_cut(renderer)
    layer.setRenderer(renderer)
    return layer


def result_with_extreme_roi(tmp_path, bands):
    """The source's pixels, except the ROI: 0 in its top half, 255 in its bottom half."""
    data = pixels(bands, HEIGHT, WIDTH)
    data[(slice(None), *ROI)] = 0
    data[:, ROI[0].start + 3 : ROI[0].stop, ROI[1]] = 255
    path, _data, _gt = make_geotiff(tmp_path / "result.tif", WIDTH, HEIGHT, bands, data=data)
    return path


def contrast(ce):
    return (ce.minimumValue(), ce.maximumValue(), ce.contrastEnhancementAlgorithm())


def rgb_settings(renderer):
    """Band mapping, then (min, max, algorithm) of red, green, blue."""
    assert isinstance(renderer, QgsMultiBandColorRenderer), type(renderer)
    bands = (renderer.redBand(), renderer.greenBand(), renderer.blueBand())
    enhancements = (
        renderer.redContrastEnhancement(),
        renderer.greenContrastEnhancement(),
        renderer.blueContrastEnhancement(),
    )
    return bands, tuple(contrast(ce) for ce in enhancements)


def gray_settings(renderer):
    assert isinstance(renderer, QgsSingleBandGrayRenderer), type(renderer)
    return renderer.grayBand(), contrast(renderer.contrastEnhancement())


@pytest.mark.parametrize(
    ("bands", "make_source", "settings_of"),
    [(3, rgb_source, rgb_settings), (1, gray_source, gray_settings)],
    ids=["rgb", "gray"],
)
def test_result_renders_with_the_source_stretch(project, tmp_path, bands, make_source, settings_of):
    source_path, _data, _gt = make_geotiff(tmp_path / "source.tif", WIDTH, HEIGHT, bands)
    source = make_source(source_path)
    project.addMapLayer(source)
    expected = settings_of(source.renderer())

    layer = results.add_result_layer(
        result_with_extreme_roi(tmp_path, bands), {"prompt": "a lake"}, source, project
    )

    assert settings_of(layer.renderer()) == expected
    assert layer.renderer() is not source.renderer()  # its own copy


def render(layer, extent):
    """Draw `layer` alone over `extent`, as the canvas would (QGIS re-stretches a layer whose
    min/max follow the view when it is drawn)."""
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(WIDTH, HEIGHT))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()


def stretched_to_the_view(layer):
    """The source's min/max follow the canvas view, computed exactly (every pixel counts)."""
    origin = layer.renderer().minMaxOrigin()
    origin.setLimits(QgsRasterMinMaxOrigin.Limits.MinMax)
    origin.setExtent(QgsRasterMinMaxOrigin.Extent.UpdatedCanvas)
    origin.setStatAccuracy(QgsRasterMinMaxOrigin.StatAccuracy.Exact)
    layer.renderer().setMinMaxOrigin(origin)


def test_drawing_the_result_keeps_the_source_stretch(project, tmp_path):
    """A source stretched to the view: drawing the result must not re-stretch it to the
    result's own pixels (the ROI's 0 and 255 would make every unchanged pixel look duller)."""
    source_path, _data, _gt = make_geotiff(tmp_path / "source.tif", WIDTH, HEIGHT, 3)
    source = rgb_source(source_path)
    stretched_to_the_view(source)
    project.addMapLayer(source)
    expected = rgb_settings(source.renderer())

    layer = results.add_result_layer(
        result_with_extreme_roi(tmp_path, 3), {"prompt": "a lake"}, source, project
    )
    render(layer, layer.extent())

    assert rgb_settings(layer.renderer()) == expected


def gradient(bands):
    """Values rising from left to right (0-236): a corner's min/max differ from the whole's."""
    row = (np.arange(WIDTH) * 4).astype(np.uint8)
    return np.broadcast_to(row, (bands, HEIGHT, WIDTH)).copy()


def test_result_follows_the_source_renderer(project, tmp_path):
    """The source re-stretched (for a new view, or restyled): the result is drawn like it.

    The source is first drawn over its whole extent, as the canvas would: pytest-qgis's iface
    puts every added layer on its canvas, and once an earlier test has given that canvas an
    extent, adding the source to the project (which processes events) lets the canvas draw and
    re-stretch it. Drawn explicitly, the starting stretch is the same whatever ran before."""
    data = gradient(3)
    source_path, _data, _gt = make_geotiff(tmp_path / "source.tif", WIDTH, HEIGHT, 3, data=data)
    source = rgb_source(source_path)
    stretched_to_the_view(source)
    project.addMapLayer(source)
    render(source, source.extent())  # the whole view: min/max of every pixel
    layer = results.add_result_layer(
        result_with_extreme_roi(tmp_path, 3), {"prompt": "a lake"}, source, project
    )
    before = rgb_settings(layer.renderer())
    assert before == rgb_settings(source.renderer())

    extent = source.extent()
    corner = QgsRectangle(
        extent.xMinimum(), extent.center().y(), extent.center().x(), extent.yMaximum()
    )
    render(source, corner)  # the source's min/max are now those of that corner

    assert rgb_settings(source.renderer()) != before  # the source did change
    assert rgb_settings(layer.renderer()) == rgb_settings(source.renderer())
    project.removeMapLayer(layer.id())  # the result gone, a source change touches nothing of it
    source.setRenderer(QgsMultiBandColorRenderer(source.dataProvider(), 1, 2, 3))
    assert source.renderer().redBand() == 1


def test_result_with_other_bands_keeps_its_own_style(project, tmp_path):
    """A result whose band count differs from the source's is not given its renderer."""
    source_path, _data, _gt = make_geotiff(tmp_path / "source.tif", WIDTH, HEIGHT, 3)
    source = rgb_source(source_path)
    project.addMapLayer(source)
    result = result_with_extreme_roi(tmp_path, 1)

    layer = results.add_result_layer(result, {"prompt": "a lake"}, source, project)

    assert isinstance(layer.renderer(), QgsSingleBandGrayRenderer)
    assert np.isfinite(layer.renderer().contrastEnhancement().maximumValue())
