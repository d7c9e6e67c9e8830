"""Area export: an extent in the project's CRS (EPSG:3857) -> a window of a UTM 33N layer,
snapped to its pixel grid, clipped, exported with its CRS, geotransform and exact pixels."""

import numpy as np
import pytest
from helpers import ORIGIN, RES, make_geotiff, read, same_crs
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsGeometry,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)

from rs_edit_plugin import area

UTM = QgsCoordinateReferenceSystem("EPSG:32633")
WEB = QgsCoordinateReferenceSystem("EPSG:3857")


def utm_rect(col0, row0, col1, row1):
    """A rectangle in UTM from fractional pixel coordinates of the test raster."""
    x0, y0 = ORIGIN
    return QgsRectangle(x0 + col0 * RES, y0 - row1 * RES, x0 + col1 * RES, y0 - row0 * RES)


def to_web(rect):
    transform = QgsCoordinateTransform(UTM, WEB, QgsProject.instance())
    return transform.transformBoundingBox(rect)


@pytest.fixture
def raster(tmp_path, project):
    path, data, gt = make_geotiff(tmp_path / "scene.tif", width=60, height=50, bands=3)
    layer = QgsRasterLayer(str(path), "scene")
    assert layer.isValid()
    project.addMapLayer(layer)
    return layer, data, gt


def test_extent_in_another_crs_lines_up_exactly(raster, tmp_path, project):
    layer, data, gt = raster
    assert project.crs().authid() == "EPSG:3857" and layer.crs().authid() == "EPSG:32633"
    # The user's extent in the project CRS: a UTM box that does not fall on pixel edges.
    wanted = utm_rect(10.3, 5.6, 29.2, 21.1)
    extent_3857 = to_web(wanted)

    window = area.window_for_extent(layer, extent_3857, WEB)
    # Snapped outwards to whole pixels: it covers what was asked for, no more than the
    # bounding box of the transformed extent needs (3857 -> UTM is not axis-aligned).
    back = area.to_layer_crs(extent_3857, WEB, layer)
    assert window.extent.contains(back) or window.extent == back
    assert window.xoff <= 10 and window.yoff <= 5
    assert window.xoff + window.width >= 30 and window.yoff + window.height >= 22
    assert window.width <= 22 and window.height <= 19
    x0, xres, _, y0, _, yres = gt
    assert window.geotransform == (
        x0 + window.xoff * xres,
        xres,
        0.0,
        y0 + window.yoff * yres,
        0.0,
        yres,
    )

    tile = area.export_window(layer, window, tmp_path / "tile.tif")
    tile_data, tile_gt, tile_wkt = read(tile)
    assert same_crs(tile_wkt, layer.crs().toWkt())
    assert tile_gt == window.geotransform  # exact, not approximately
    rows = slice(window.yoff, window.yoff + window.height)
    cols = slice(window.xoff, window.xoff + window.width)
    np.testing.assert_array_equal(tile_data, data[:, rows, cols])
    assert tile_data.dtype == data.dtype

    # The tile opens in QGIS with the extent of the window, in the layer's CRS.
    tile_layer = QgsRasterLayer(str(tile), "tile")
    assert tile_layer.crs() == layer.crs()
    assert tile_layer.extent() == window.extent


def test_exact_pixel_edges_are_not_grown(raster):
    layer, _data, _gt = raster
    window = area.window_for_extent(layer, utm_rect(4, 7, 20, 19), UTM)
    assert (window.xoff, window.yoff, window.width, window.height) == (4, 7, 16, 12)


def test_extent_is_clipped_to_the_layer(raster):
    layer, _data, _gt = raster
    window = area.window_for_extent(layer, utm_rect(-30.5, -8, 15.2, 70), UTM)
    assert (window.xoff, window.yoff, window.width, window.height) == (0, 0, 16, 50)


def test_area_outside_the_layer_is_refused(raster):
    layer, _data, _gt = raster
    with pytest.raises(area.AreaError, match="does not overlap"):
        area.window_for_extent(layer, to_web(utm_rect(100, 100, 120, 120)), WEB)


def test_too_large_area_is_refused_with_a_clear_message(raster):
    layer, _data, _gt = raster
    window = area.window_for_extent(layer, layer.extent(), UTM)
    area.check_size(window, 60 * 50)  # exactly at the limit: fine
    with pytest.raises(area.AreaError) as error:
        area.check_size(window, 1000)
    message = str(error.value)
    assert "60 x 50 px" in message and "at most" in message and "smaller" in message
    with pytest.raises(area.AreaError, match="at most 40 px wide"):
        area.check_size(window, 10**6, max_width=40)


def test_qgis_writer_fallback_gives_the_same_tile(raster, tmp_path):
    """Layers that are not GDAL files are written by QgsRasterFileWriter on the same grid."""
    layer, data, _gt = raster
    window = area.window_for_extent(layer, to_web(utm_rect(3.5, 2.5, 17.5, 12.5)), WEB)
    source = area.RasterSource(layer.name(), layer.crs(), "", layer.dataProvider().clone())
    tile = area.export_window(source, window, tmp_path / "writer.tif")
    tile_data, tile_gt, tile_wkt = read(tile)
    assert same_crs(tile_wkt, layer.crs().toWkt())
    np.testing.assert_allclose(tile_gt, window.geotransform, rtol=0, atol=1e-6)
    rows = slice(window.yoff, window.yoff + window.height)
    cols = slice(window.xoff, window.xoff + window.width)
    np.testing.assert_array_equal(tile_data, data[:, rows, cols])


def test_uint16_with_nodata_keeps_values_and_nodata(tmp_path, project):
    path, data, _gt = make_geotiff(
        tmp_path / "u16.tif", width=20, height=20, bands=4, dtype=np.uint16, nodata=0
    )
    layer = QgsRasterLayer(str(path), "u16")
    window = area.window_for_extent(layer, utm_rect(2, 2, 9, 11), UTM)
    tile = area.export_window(layer, window, tmp_path / "tile16.tif")
    tile_data, _gt2, _wkt = read(tile)
    np.testing.assert_array_equal(tile_data, data[:, 2:11, 2:9])
    from osgeo import gdal

    dataset = gdal.Open(str(tile))
    assert dataset.RasterCount == 4
    assert dataset.GetRasterBand(1).GetNoDataValue() == 0
    assert dataset.GetRasterBand(2).GetDescription() == "band 2"


@pytest.mark.parametrize("writer", ["gdal", "qgis"])
def test_byte_nodata_out_of_range_is_dropped_not_clamped(tmp_path, project, writer):
    """Issue 16: a Byte raster declaring nodata -10000 was exported with nodata clamped to 0,
    so its valid 0 pixels became transparent. No pixel of it is nodata; none may become one."""
    from osgeo import gdal

    data = np.zeros((3, 20, 20), np.uint8)
    data[:, :, 10:] = 7  # half the pixels are real zeros
    path, data, _gt = make_geotiff(
        tmp_path / "byte.tif", width=20, height=20, data=data, nodata=-10000
    )
    assert gdal.Open(str(path)).GetRasterBand(1).GetNoDataValue() == -10000
    layer = QgsRasterLayer(str(path), "byte")
    window = area.window_for_extent(layer, utm_rect(2, 2, 18, 18), UTM)
    source = area.RasterSource.from_layer(layer)
    if writer == "qgis":
        source = area.RasterSource(layer.name(), layer.crs(), "", layer.dataProvider().clone())
    tile = area.export_window(source, window, tmp_path / "tile.tif")
    tile_data, _gt2, _wkt = read(tile)
    np.testing.assert_array_equal(tile_data, data[:, 2:18, 2:18])
    dataset = gdal.Open(str(tile))
    for i in range(1, 4):
        band = dataset.GetRasterBand(i)
        assert gdal.GetDataTypeName(band.DataType) == "Byte"
        assert band.GetNoDataValue() is None
        assert band.GetMaskFlags() == gdal.GMF_ALL_VALID
        assert band.GetMaskBand().ReadAsArray().min() == 255  # every pixel is valid


def test_nodata_representable():
    from osgeo import gdal

    assert not area.nodata_representable(-10000, gdal.GDT_Byte)
    assert not area.nodata_representable(256, gdal.GDT_Byte)
    assert not area.nodata_representable(0.5, gdal.GDT_UInt16)
    assert not area.nodata_representable(float("nan"), gdal.GDT_Int16)
    assert not area.nodata_representable(1e39, gdal.GDT_Float32)
    assert area.nodata_representable(0, gdal.GDT_Byte)
    assert area.nodata_representable(255, gdal.GDT_Byte)
    assert area.nodata_representable(-10000, gdal.GDT_Int16)
    assert area.nodata_representable(float("nan"), gdal.GDT_Float32)
    assert area.nodata_representable(-3.4e38, gdal.GDT_Float32)
    assert area.nodata_representable(1e300, gdal.GDT_Float64)
    assert area.nodata_representable(None, gdal.GDT_Byte)


def test_selection_extent_in_the_layer_crs(raster, project):
    layer, _data, _gt = raster
    vector = QgsVectorLayer("Polygon?crs=EPSG:4326", "sites", "memory")
    wanted = utm_rect(5.5, 5.5, 11.5, 8.5)  # mid-pixel edges: 4326 round trips stay inside
    to_4326 = QgsCoordinateTransform(UTM, QgsCoordinateReferenceSystem("EPSG:4326"), project)
    features = []
    for rect in (wanted, utm_rect(40, 30, 41, 31)):
        geometry = QgsGeometry.fromRect(rect)
        geometry.transform(to_4326)
        feature = QgsFeature()
        feature.setGeometry(geometry)
        features.append(feature)
    vector.dataProvider().addFeatures(features)
    project.addMapLayer(vector)
    with pytest.raises(area.AreaError, match="no features are selected"):
        area.selection_extent([vector], layer.crs())
    vector.selectByIds([next(vector.getFeatures()).id()])
    extent = area.selection_extent([vector], layer.crs())
    window = area.snap_window(layer, extent)
    assert (window.xoff, window.yoff, window.width, window.height) == (5, 5, 7, 4)


@pytest.fixture
def large(tmp_path, project):
    path, _data, _gt = make_geotiff(tmp_path / "large.tif", width=600, height=400, bands=1)
    layer = QgsRasterLayer(str(path), "large")
    assert layer.isValid()
    project.addMapLayer(layer)
    return layer


def test_selection_gets_context_around_its_bounding_box(large):
    """The issue's case: a 109 x 34 px strip sent bare (44 % of it ROI) gave the model no
    context. Padded, the box covers at most 25 % with at least 64 px on each side."""
    box = area.snap_window(large, utm_rect(200, 150, 309, 184))
    assert (box.width, box.height) == (109, 34)
    window = area.context_window(large, box)
    left, top = box.xoff - window.xoff, box.yoff - window.yoff
    right = window.xoff + window.width - (box.xoff + box.width)
    bottom = window.yoff + window.height - (box.yoff + box.height)
    assert min(left, top, right, bottom) >= area.CONTEXT_MIN_PX
    assert box.pixels / window.pixels <= area.CONTEXT_SHARE
    # The same grid: the window's geotransform is the layer's, shifted by whole pixels.
    assert window.geotransform == (
        ORIGIN[0] + window.xoff * RES,
        RES,
        0.0,
        ORIGIN[1] - window.yoff * RES,
        0.0,
        -RES,
    )
    # A large box: half its size on each side (4x the area), still at least 64 px.
    big = area.snap_window(large, utm_rect(200, 100, 400, 300))
    grown = area.context_window(large, big)
    assert (grown.width, grown.height) == (400, 400) and big.pixels / grown.pixels == 0.25


def test_context_stays_on_the_raster_and_within_the_limits(large):
    corner = area.snap_window(large, utm_rect(0, 0, 10, 10))
    window = area.context_window(large, corner)
    assert (window.xoff, window.yoff) == (0, 0)  # clipped: nothing off the raster
    assert (window.width, window.height) == (10 + 128, 10 + 128)  # the context moves inside
    # Limits: less context rather than a refused area, never less than the box itself.
    limited = area.context_window(large, corner, max_pixels=50 * 50)
    assert limited.pixels <= 50 * 50 and limited.width >= 10 and limited.height >= 10
    assert limited.width > 40  # as much context as the limit allows
    assert area.context_window(large, corner, max_width=12).width == 12
    tiny = area.context_window(large, corner, max_pixels=50)
    assert (tiny.width, tiny.height) == (10, 10)  # even the box is too large: check_size says
    # A raster smaller than the padded box: the whole raster.
    whole = area.context_window(large, area.snap_window(large, utm_rect(100, 50, 500, 350)))
    assert (whole.xoff, whole.yoff, whole.width, whole.height) == (0, 0, 600, 400)
