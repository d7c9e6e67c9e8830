"""ROI from GeoJSON in any CRS and from mask rasters, onto the raster's pixel grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from conftest import ORIGIN, random_data, write_raster
from pyproj import Transformer
from rasterio import features
from rasterio.transform import Affine, from_origin
from rasterio.windows import Window
from shapely.geometry import Polygon, box, mapping

from rs_edit.errors import CrsError, GridMismatchError, RoiError
from rs_edit.raster import inspect_raster
from rs_edit.roi import read_geojson, roi_from_geojson, roi_from_mask

TO_WGS84 = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
FULL = Window(0, 0, 64, 48)


def utm(col, row):
    """World coordinates of a pixel corner on the conftest grid (10 m, origin 500000/5500000)."""
    return ORIGIN[0] + 10 * col, ORIGIN[1] - 10 * row


def wgs84_polygon(pixel_corners):
    lonlat = [TO_WGS84.transform(*utm(c, r)) for c, r in pixel_corners]
    return {"type": "Polygon", "coordinates": [lonlat + [lonlat[0]]]}


def feature_collection(*geoms):
    return {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "properties": {}, "geometry": g} for g in geoms],
    }


def test_wgs84_polygon_over_utm_raster_hits_expected_pixels(rgb_tif):
    info = inspect_raster(rgb_tif)
    square = [(10, 8), (30, 8), (30, 20), (10, 20)]
    roi = roi_from_geojson(feature_collection(wgs84_polygon(square)), info)
    mask = roi.rasterize(FULL)
    expected = np.zeros((48, 64), dtype=bool)
    expected[8:20, 10:30] = True
    # A lon/lat square is not exactly a UTM square: allow the edge pixels to differ.
    assert (mask != expected).sum() <= 2 * (20 + 12)
    assert mask[10:18, 12:28].all() and not mask[:6].any() and not mask[:, 33:].any()
    assert (roi.bbox.col_off, roi.bbox.row_off) in {(9, 7), (9, 8), (10, 7), (10, 8)}
    assert not roi.clipped


def test_geojson_in_raster_crs_via_legacy_crs_member_is_exact(rgb_tif):
    info = inspect_raster(rgb_tif)
    poly = Polygon([utm(5, 5), utm(25, 5), utm(25, 30), utm(5, 30)])
    doc = {
        "type": "Feature",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
        "geometry": mapping(poly),
    }
    mask = roi_from_geojson(doc, info).rasterize(FULL)
    expected = np.zeros((48, 64), dtype=bool)
    expected[5:30, 5:25] = True
    assert np.array_equal(mask, expected)


def test_rasterize_on_a_window_matches_the_full_grid(rgb_tif):
    info = inspect_raster(rgb_tif)
    roi = roi_from_geojson(feature_collection(wgs84_polygon([(10, 8), (40, 12), (20, 40)])), info)
    full = roi.rasterize(FULL)
    window = Window(7, 5, 40, 30)
    assert np.array_equal(roi.rasterize(window), full[5:35, 7:47])


def test_roi_partly_outside_is_clipped(rgb_tif):
    info = inspect_raster(rgb_tif)
    roi = roi_from_geojson(
        feature_collection(wgs84_polygon([(50, -10), (90, -10), (90, 20), (50, 20)])), info
    )
    assert roi.clipped
    assert (roi.bbox.col_off + roi.bbox.width, roi.bbox.row_off) == (64, 0)
    mask = roi.rasterize(FULL)
    assert mask[:18, 52:].all() and not mask[:, :48].any()


def test_roi_outside_raster_is_an_error(rgb_tif):
    info = inspect_raster(rgb_tif)
    far = feature_collection(wgs84_polygon([(500, 500), (520, 500), (520, 520), (500, 520)]))
    with pytest.raises(RoiError, match="outside the raster"):
        roi_from_geojson(far, info)


def test_self_intersecting_polygon_is_repaired(rgb_tif):
    info = inspect_raster(rgb_tif)
    bowtie = wgs84_polygon([(10, 10), (30, 30), (30, 10), (10, 30)])
    mask = roi_from_geojson(feature_collection(bowtie), info).rasterize(FULL)
    # Both triangles of the bow-tie are kept (make_valid), not dropped or inverted.
    assert mask[19, 12] and mask[19, 27] and not mask[12, 19]


def test_polygons_from_mixed_collection_and_multipolygon(rgb_tif):
    info = inspect_raster(rgb_tif)
    a = wgs84_polygon([(2, 2), (8, 2), (8, 8), (2, 8)])
    b = wgs84_polygon([(40, 30), (50, 30), (50, 40), (40, 40)])
    multi = {"type": "MultiPolygon", "coordinates": [a["coordinates"], b["coordinates"]]}
    line = {"type": "LineString", "coordinates": [[15.0, 49.6], [15.1, 49.7]]}
    mask = roi_from_geojson(feature_collection(multi, line), info).rasterize(FULL)
    assert mask[5, 5] and mask[35, 45] and not mask[20, 20]


def test_bare_polygon_and_geojson_text_and_file(rgb_tif, tmp_path):
    info = inspect_raster(rgb_tif)
    poly = wgs84_polygon([(10, 10), (20, 10), (20, 20), (10, 20)])
    path = tmp_path / "roi.geojson"
    path.write_text(json.dumps(poly))
    masks = [roi_from_geojson(src, info).rasterize(FULL) for src in (poly, json.dumps(poly), path)]
    assert masks[0].sum() > 50
    assert all(np.array_equal(masks[0], m) for m in masks[1:])


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{not json", "not valid JSON"),
        ('"a string"', "not GeoJSON"),
        ('{"type": "Point", "coordinates": [15, 49]}', "no polygons"),
        ('{"type": "FeatureCollection", "features": []}', "no polygons"),
        ('{"type": "FeatureCollection"}', "features"),
        ('{"type": "Polygon", "coordinates": [[[1, 2]]]}', "invalid coordinates"),
        ('{"type": "Circle", "coordinates": [1, 2]}', "unknown GeoJSON type"),
        ('{"type": "Polygon", "coordinates": [[[0,0],[1,1],[2,2],[0,0]]]}', "empty"),
        (
            '{"type": "Polygon", "coordinates": [[[500000,5500000],[500100,5500000],'
            "[500100,5499900],[500000,5500000]]]}",
            "not longitude/latitude",
        ),
        ('{"type": "Polygon", "coordinates": [[[NaN,1],[2,2],[3,1],[NaN,1]]]}', "NaN is not"),
        ('{"type": "Polygon", "coordinates": [[[1,1],[Infinity,1],[2,2],[1,1]]]}', "Infinity"),
        ('{"type": "Polygon", "coordinates": [[[1,1],[2,1],[2,2],[1,2]]]}', "not closed"),
        ('{"type": "MultiPolygon", "coordinates": [[[[1,1],[2,1],[1,1]]]]}', "not closed"),
        ('{"type": "GeometryCollection", "geometries": 5}', "'geometries' list"),
        (
            '{"type": "Polygon", "crs": {"type": "name", "properties": 5}, "coordinates": []}',
            "name",
        ),
        ('{"type": "Polygon", "coordinates": [null]}', "invalid coordinates"),
        ('{"type": "Polygon", "coordinates": [[null, null, null, null]]}', "invalid coordinates"),
        ('{"type": "MultiPolygon", "coordinates": [null]}', "invalid coordinates"),
        ('{"type": "GeometryCollection", "geometries": [' * 3000 + "]}" * 3000, "too deeply"),
        ('{"type": "GeometryCollection", "geometries": [' * 900 + "]}" * 900, "too deeply"),
    ],
    ids=lambda v: v[:40] if isinstance(v, str) else None,
)
def test_bad_geojson(doc, message):
    with pytest.raises((RoiError, CrsError), match=message):
        read_geojson(doc)


@pytest.mark.parametrize(
    ("crs", "coordinates", "error"),
    [
        ("IAU_2015:30100", [[[13, 36], [13.001, 36], [13.001, 36.001], [13, 36]]], CrsError),
        ("EPSG:3857", [[[0, 0], [1e308, 0], [1e308, 1e308], [0, 0]]], RoiError),
    ],
    ids=["moon-crs", "huge-coordinates"],
)
def test_roi_that_cannot_be_transformed_to_the_raster(rgb_tif, crs, coordinates, error):
    """A CRS of another planet has no transformation to Earth's; coordinates too large to
    densify: both are bad input, not internal errors."""
    roi = {
        "type": "Polygon",
        "crs": {"type": "name", "properties": {"name": crs}},
        "coordinates": coordinates,
    }
    with pytest.raises(error, match="cannot be transformed"):
        roi_from_geojson(roi, inspect_raster(rgb_tif))


def test_unknown_crs_member():
    doc = {
        "type": "Polygon",
        "crs": {"type": "name", "properties": {"name": "EPSG:999999"}},
        "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]],
    }
    with pytest.raises(CrsError, match="unknown CRS"):
        read_geojson(doc)


def test_missing_roi_file(tmp_path):
    with pytest.raises(RoiError, match="not found"):
        read_geojson(str(tmp_path / "none.geojson"))


def test_geojson_on_raster_without_georeferencing(tmp_path):
    plain = write_raster(tmp_path / "plain.tif", random_data("uint8", 3), crs=None)
    with pytest.raises(CrsError, match="no georeferencing"):
        roi_from_geojson(wgs84_polygon([(1, 1), (5, 1), (5, 5)]), inspect_raster(plain))


def test_geojson_on_raster_with_ground_control_points_only(tmp_path):
    from rasterio.control import GroundControlPoint

    data = random_data("uint8", 3)
    path = tmp_path / "gcps.tif"
    gcps = [
        GroundControlPoint(0, 0, ORIGIN[0], ORIGIN[1]),
        GroundControlPoint(48, 64, *utm(64, 48)),
    ]
    gcps.append(GroundControlPoint(0, 64, *utm(64, 0)))
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=48,
        count=3,
        dtype="uint8",
        gcps=gcps,
        crs="EPSG:32633",
    ) as dst:
        dst.write(data)
    info = inspect_raster(path)
    assert info.gcp_count == 3 and not info.georeferenced
    with pytest.raises(CrsError, match="3 ground control points only.*gdalwarp"):
        roi_from_geojson(wgs84_polygon([(1, 1), (5, 1), (5, 5)]), inspect_raster(path))


def test_mask_raster_on_same_grid(rgb_tif, tmp_path):
    info = inspect_raster(rgb_tif)
    mask = np.zeros((1, 48, 64), dtype="uint8")
    mask[0, 10:20, 30:40] = 1
    mask[0, 0, 0] = 255  # nodata: not part of the ROI
    path = write_raster(tmp_path / "mask.tif", mask, nodata=255)
    roi = roi_from_mask(path, info)
    assert (roi.bbox.col_off, roi.bbox.row_off, roi.bbox.width, roi.bbox.height) == (30, 10, 10, 10)
    assert np.array_equal(roi.rasterize(FULL), mask[0] == 1)
    assert np.array_equal(roi.rasterize(Window(25, 5, 20, 20)), (mask[0] == 1)[5:25, 25:45])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shape": (1, 48, 63)},
        {"transform": from_origin(ORIGIN[0] + 10, ORIGIN[1], 10, 10)},
        {"transform": from_origin(*ORIGIN, 5, 5)},
        {"crs": "EPSG:32634"},
    ],
)
def test_mask_on_another_grid(rgb_tif, tmp_path, kwargs):
    shape = kwargs.pop("shape", (1, 48, 64))
    path = write_raster(tmp_path / "mask.tif", np.ones(shape, dtype="uint8"), **kwargs)
    with pytest.raises(GridMismatchError, match="grid"):
        roi_from_mask(path, inspect_raster(rgb_tif))


def test_mask_grids_without_crs(tmp_path):
    """Geotransforms are compared whenever both rasters have one, CRS or not; a mask that is a
    plain pixel grid (no geotransform) is taken as the image's."""
    data = np.ones((1, 48, 64), dtype="uint8")
    here = from_origin(1000, 2000, 1, 1)
    image = write_raster(tmp_path / "image.tif", random_data("uint8", 3), crs=None, transform=here)
    same = write_raster(tmp_path / "same.tif", data, crs=None, transform=here)
    assert roi_from_mask(same, inspect_raster(image)).bbox.width == 64
    plain = write_raster(tmp_path / "plain.tif", data, crs=None)
    assert roi_from_mask(plain, inspect_raster(image)).bbox.width == 64
    there = write_raster(
        tmp_path / "there.tif", data, crs=None, transform=from_origin(5000, 9000, 3, 3)
    )
    with pytest.raises(GridMismatchError, match="geotransform"):
        roi_from_mask(there, inspect_raster(image))


def test_mask_on_a_rotated_grid(tmp_path):
    """A grid rotated by 90 degrees has a = e = 0: the tolerance comes from the pixel's size, so
    the same grid is accepted and one shifted by a tenth of a pixel is not."""
    rotated = Affine(0.0, 10.0, ORIGIN[0], 10.0, 0.0, ORIGIN[1])
    image = write_raster(tmp_path / "image.tif", random_data("uint8", 3), transform=rotated)
    data = np.ones((1, 48, 64), dtype="uint8")
    same = write_raster(tmp_path / "same.tif", data, transform=rotated)
    assert roi_from_mask(same, inspect_raster(image)).bbox.width == 64
    shifted = Affine(0.0, 10.0, ORIGIN[0] + 1.0, 10.0, 0.0, ORIGIN[1])
    moved = write_raster(tmp_path / "moved.tif", data, transform=shifted)
    with pytest.raises(GridMismatchError, match="geotransform"):
        roi_from_mask(moved, inspect_raster(image))


def test_empty_mask(rgb_tif, tmp_path):
    path = write_raster(tmp_path / "mask.tif", np.zeros((1, 48, 64), dtype="uint8"))
    with pytest.raises(RoiError, match="empty"):
        roi_from_mask(path, inspect_raster(rgb_tif))


def test_sliver_polygon_still_selects_pixels(rgb_tif):
    info = inspect_raster(rgb_tif)
    sliver = box(*utm(10, 20), *utm(10.2, 10))  # 2 m wide: covers no pixel centre
    doc = {
        "type": "Polygon",
        "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
        "coordinates": mapping(sliver)["coordinates"],
    }
    mask = roi_from_geojson(doc, info).rasterize(FULL)
    reference = features.rasterize(
        [sliver], out_shape=(48, 64), transform=from_origin(*ORIGIN, 10, 10), all_touched=True
    )
    assert mask.sum() > 0 and np.array_equal(mask, reference.astype(bool))
