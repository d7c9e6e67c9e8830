"""The procedural demo scene: layout, georeferencing, GeoTIFF output and the ROI GeoJSON."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio import features
from rasterio.enums import ColorInterp, Compression
from rasterio.transform import Affine, array_bounds
from shapely.geometry import MultiPolygon, Polygon, box, shape

from rs_edit.scene import Scene, make_scene, roi_geojson, write_scene

FEATURES = ("river", "roads", "buildings", "fields")


def scene_box(scene: Scene) -> Polygon:
    _, h, w = scene.image.shape
    return box(*array_bounds(h, w, scene.transform))


def burn(scene: Scene, geom) -> np.ndarray:
    _, h, w = scene.image.shape
    return features.rasterize([geom], out_shape=(h, w), transform=scene.transform).astype(bool)


def roi_polygon(gj: dict) -> Polygon:
    (feat,) = gj["features"]
    return shape(feat["geometry"])


def to_scene_crs(scene: Scene, poly: Polygon) -> Polygon:
    back = Transformer.from_crs("EPSG:4326", scene.crs.to_wkt(), always_xy=True)
    x, y = np.asarray(poly.exterior.coords).T
    return Polygon(np.column_stack(back.transform(x, y)))


@pytest.fixture(scope="module")
def scene96() -> Scene:
    return make_scene(96, seed=0)


@pytest.mark.parametrize("size", [48, 97, 256])
def test_shape_dtype_and_features(size):
    scene = make_scene(size, seed=1)
    assert scene.image.shape == (3, size, size)
    assert scene.image.dtype == np.uint8
    assert set(scene.features) == set(FEATURES)
    assert isinstance(scene.features["buildings"], MultiPolygon)
    assert isinstance(scene.features["fields"], MultiPolygon)
    assert len(scene.features["buildings"].geoms) >= 2
    bounds = scene_box(scene).buffer(1e-6)
    for name in FEATURES:
        geom = scene.features[name]
        assert geom.is_valid and not geom.is_empty, name
        assert bounds.contains(geom), name
    # Not a flat or saturated picture.
    assert scene.image.reshape(3, -1).std(axis=1).min() > 8
    assert 40 < scene.image.mean() < 200


def test_classes_have_plausible_colours(scene96):
    img = scene96.image.astype(float)
    river = burn(scene96, scene96.features["river"])
    built = burn(scene96, scene96.features["buildings"])
    roads = burn(scene96, scene96.features["roads"]) & ~built & ~river
    assert river.mean() > 0.02 and built.mean() > 0.01 and roads.mean() > 0.01
    r, g, b = (img[i][river].mean() for i in range(3))
    assert b > r and g > r  # blue-green water
    road = img[:, roads].mean(axis=1)
    assert road.max() - road.min() < 20  # grey
    # Rasterized layers line up with the image: water differs clearly from its surroundings.
    land = ~river & ~roads & ~built
    assert np.abs(img[:, river].mean(axis=1) - img[:, land].mean(axis=1)).sum() > 40


def test_deterministic_by_seed():
    a, b = make_scene(80, seed=7), make_scene(80, seed=7)
    np.testing.assert_array_equal(a.image, b.image)
    for name in FEATURES:
        assert a.features[name].equals(b.features[name]), name


def test_different_seeds_differ():
    a, b = make_scene(80, seed=1), make_scene(80, seed=2)
    assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() > 10
    for name in ("river", "buildings"):
        assert not a.features[name].equals(b.features[name]), name


def test_georeferencing_as_requested():
    scene = make_scene(64, seed=0, pixel_size=5.0, crs="EPSG:32632", origin=(400000.0, 5200000.0))
    assert scene.transform == Affine(5.0, 0.0, 400000.0, 0.0, -5.0, 5200000.0)
    assert scene.crs.to_epsg() == 32632 and scene.crs.is_projected
    assert scene_box(scene).bounds == (400000.0, 5200000.0 - 320.0, 400000.0 + 320.0, 5200000.0)
    assert box(*scene_box(scene).bounds).buffer(1e-6).contains(scene.features["river"])

    default = make_scene(48)
    assert default.transform == Affine(2.0, 0.0, 500000.0, 0.0, -2.0, 5500000.0)
    assert default.crs.to_epsg() == 32633


@pytest.mark.parametrize("kwargs", [{"size": 8}, {"pixel_size": 0.0}, {"crs": "EPSG:4326"}])
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        make_scene(**{"size": 48, **kwargs})


@pytest.mark.parametrize("size", [96, 300])
def test_write_scene_round_trip(tmp_path, size):
    scene = make_scene(size, seed=3)
    path = tmp_path / "scene.tif"
    path.write_bytes(b"stale")  # replaced, not appended to
    write_scene(scene, path)
    assert os.listdir(tmp_path) == ["scene.tif"]  # no temporary file or sidecar left behind
    with rasterio.open(path) as src:
        assert src.driver == "GTiff"
        assert (src.count, src.height, src.width) == (3, size, size)
        assert src.dtypes == ("uint8",) * 3
        np.testing.assert_array_equal(src.read(), scene.image)
        assert src.crs == scene.crs
        assert src.transform == scene.transform
        assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert src.descriptions == ("red", "green", "blue")
        assert src.compression == Compression.deflate
        tiled = src.block_shapes[0] == (256, 256)
        assert tiled == (size >= 256)


def test_write_scene_failure_leaves_nothing(tmp_path):
    scene = make_scene(48, seed=0)
    broken = Scene(scene.image[:2], scene.transform, scene.crs, scene.features)  # two bands
    with pytest.raises(Exception):  # noqa: B017 - whatever rasterio raises
        write_scene(broken, tmp_path / "out.tif")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("size", [48, 96, 200])
def test_roi_geojson_wgs84(size, feature):
    scene = make_scene(size, seed=size)
    gj = roi_geojson(scene, feature=feature)
    json.dumps(gj)  # plain JSON types only
    assert gj["type"] == "FeatureCollection" and "crs" not in gj
    (feat,) = gj["features"]
    assert feat["type"] == "Feature" and feat["geometry"]["type"] == "Polygon"
    ring = feat["geometry"]["coordinates"][0]
    assert len(ring) >= 4 and ring[0] == ring[-1]
    lon, lat = np.array(ring).T
    assert ((lon > 12) & (lon < 18)).all() and ((lat > 49) & (lat < 50)).all()  # lon/lat order
    poly = roi_polygon(gj)
    assert poly.is_valid and poly.exterior.is_ccw  # RFC 7946 right-hand rule

    local = to_scene_crs(scene, poly)
    assert scene_box(scene).contains(local)
    coverage = burn(scene, local).mean()
    assert 0.10 <= coverage <= 0.30, coverage


def test_roi_over_buildings_covers_some(scene96):
    local = to_scene_crs(scene96, roi_polygon(roi_geojson(scene96)))
    blocks = [b for b in scene96.features["buildings"].geoms if local.contains(b)]
    assert len(blocks) >= 2


def test_roi_geojson_in_scene_crs(scene96):
    gj = roi_geojson(scene96, feature="river", to_wgs84=False)
    assert gj["crs"] == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
    poly = roi_polygon(gj)
    assert scene_box(scene96).contains(poly)
    assert poly.intersects(scene96.features["river"])
    assert 0.10 <= burn(scene96, poly).mean() <= 0.30


def test_roi_geojson_unknown_feature(scene96):
    with pytest.raises(ValueError, match="unknown feature"):
        roi_geojson(scene96, feature="lakes")


def test_large_scenes_have_the_right_shape():
    # Speed is a benchmark figure, not a test: here only that large sizes work.
    scene = make_scene(1024, seed=5)
    assert scene.image.shape == (3, 1024, 1024)
    assert scene.transform.a == 2.0
