"""`rs_edit.vectors.read_polygons`: GeoJSON by hand, every other format through pyogrio.

Every file is written here, in tmp_path: GeoPackages, Shapefiles and FlatGeobufs with pyogrio's
raw writer (WKB from shapely), GeoJSON as text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import shapely
from shapely.geometry import Point, box, mapping

from rs_edit.errors import CrsError, ParameterError, RoiError
from rs_edit.roi import read_geojson
from rs_edit.vectors import Feature, read_polygons

UTM = "EPSG:32633"
# Three squares in UTM 33N, 100 m apart.
SQUARES = [box(500000 + 100 * i, 5500000, 500050 + 100 * i, 5500050) for i in range(3)]


def write_layer(path: Path, geoms, fields: dict | None = None, layer=None, crs=UTM, kind=None):
    """One layer with pyogrio's raw writer; appends when the file (a GeoPackage) exists."""
    fields = fields or {}
    wkb = np.array([None if g is None else shapely.to_wkb(g) for g in geoms], dtype=object)
    kind = kind or (
        "Polygon" if all(g is None or g.geom_type == "Polygon" for g in geoms) else "Unknown"
    )
    pyogrio.raw.write(
        path,
        wkb,
        [np.asarray(v) for v in fields.values()],
        list(fields),
        layer=layer,
        geometry_type=kind,
        crs=crs,
        append=path.exists(),
    )
    return path


def geojson(path: Path, feats: list, crs_name: str | None = None) -> Path:
    obj = {"type": "FeatureCollection", "features": feats}
    if crs_name:
        obj["crs"] = {"type": "name", "properties": {"name": crs_name}}
    path.write_text(json.dumps(obj))
    return path


def by_id(feats: list[Feature]) -> dict[str, Feature]:
    return {f.id: f for f in feats}


# ------------------------------------------------------------------------------ GeoPackage


def test_geopackage_single_layer_ids_crs_and_attributes(tmp_path):
    path = write_layer(
        tmp_path / "p.gpkg",
        SQUARES,
        {"fid": np.array([10, 11, 12]), "damage": np.array(["major", "minor", None], dtype=object)},
        layer="damage",
    )
    feats, crs = read_polygons(path)
    assert crs.to_epsg() == 32633
    assert [f.id for f in feats] == ["10", "11", "12"]  # the primary key, as before
    assert all(f.geometry.equals(s) for f, s in zip(feats, SQUARES, strict=True))
    assert feats[0].properties == {"fid": 10, "damage": "major"}
    assert feats[2].properties["damage"] is None
    again, _ = read_polygons(path, "damage")  # naming the only layer is fine too
    assert [f.id for f in again] == ["10", "11", "12"]


def test_geopackage_several_layers(tmp_path):
    path = tmp_path / "p.gpkg"
    write_layer(path, SQUARES[:2], layer="buildings")
    write_layer(path, SQUARES[2:], {"v": np.array([7])}, layer="fields", crs="EPSG:3035")
    # A non-spatial table is not a layer to choose from.
    pyogrio.raw.write(
        path, None, [np.array([1])], ["x"], layer="notes", geometry_type=None,
        promote_to_multi=False, append=True,
    )  # fmt: skip
    with pytest.raises(RoiError, match=r"p\.gpkg has several layers \(buildings, fields\)") as e:
        read_polygons(path)
    assert "--layer" in str(e.value) and "notes" not in str(e.value)
    feats, crs = read_polygons(path, "buildings")
    assert len(feats) == 2 and crs.to_epsg() == 32633
    feats, crs = read_polygons(path, "fields")
    assert [f.id for f in feats] == ["1"] and crs.to_epsg() == 3035
    assert feats[0].properties["v"] == 7 and isinstance(feats[0].properties["v"], int)
    with pytest.raises(
        RoiError, match=r"no layer 'roads' in p\.gpkg \(layers: buildings, fields\)"
    ):
        read_polygons(path, "roads")


def test_non_polygons_are_skipped(tmp_path):
    geoms = [SQUARES[0], Point(500000, 5500000), None, shapely.MultiPolygon(SQUARES[1:])]
    path = write_layer(tmp_path / "mixed.gpkg", geoms, layer="mixed")
    feats, _ = read_polygons(path)
    assert [f.id for f in feats] == ["1", "4"]
    assert feats[1].geometry.geom_type == "MultiPolygon"


def test_integer_nulls_stay_none(tmp_path):
    # pyogrio reads an integer column with NULLs as float NaN: values must come back as ints.
    path = tmp_path / "n.gpkg"
    wkb = np.array([shapely.to_wkb(g) for g in SQUARES[:2]], dtype=object)
    pyogrio.raw.write(
        path, wkb, [np.array([3, 4])], ["cls"], field_mask=[np.array([False, True])],
        layer="n", geometry_type="Polygon", crs=UTM,
    )  # fmt: skip
    feats, _ = read_polygons(path)
    values = [f.properties["cls"] for f in feats]
    assert values == [3, None] and type(values[0]) is int  # "3", not "3.0", as a prompt value


# ---------------------------------------------------------------------- other OGR formats


@pytest.mark.parametrize("name", ["damage.shp", "damage.fgb"])
def test_projected_shapefile_and_flatgeobuf(tmp_path, name):
    names = np.array(["a", "b", "c"], dtype=object)
    path = write_layer(tmp_path / name, SQUARES, {"name": names})
    feats, crs = read_polygons(path)
    assert crs.to_epsg() == 32633
    # FlatGeobuf stores features in spatial order: match them by attribute, not position.
    got = {f.properties["name"]: f.geometry for f in feats}
    assert all(got[n].equals(s) for n, s in zip(names, SQUARES, strict=True))
    assert len({f.id for f in feats}) == 3
    assert [f.id for f in read_polygons(path)[0]] == [f.id for f in feats]  # stable
    with pytest.raises(RoiError, match="no layer 'other'"):
        read_polygons(path, "other")


# -------------------------------------------------------------------------------- GeoJSON


def test_geojson_default_crs_and_ids(tmp_path):
    square = mapping(box(12.0, 45.0, 12.001, 45.001))
    feats = [
        {"type": "Feature", "id": "a/b c", "properties": {}, "geometry": square},
        {"type": "Feature", "properties": {"id": 7}, "geometry": square},
        {"type": "Feature", "properties": {"fid": 8}, "geometry": square},
        {"type": "Feature", "properties": None, "geometry": square},
        {"type": "Feature", "properties": {}, "geometry": mapping(Point(12, 45))},
    ]
    path = geojson(tmp_path / "p.geojson", feats)
    got, crs = read_polygons(path)
    assert crs.to_epsg() == 4326  # RFC 7946
    assert [f.id for f in got] == ["a-b-c", "7", "8", "4"]  # position counts the point too
    assert read_geojson(path)[1] == crs  # the ROI reader agrees


def test_geojson_legacy_crs_member(tmp_path):
    feats = [{"type": "Feature", "properties": {}, "geometry": mapping(s)} for s in SQUARES]
    path = geojson(tmp_path / "p.json", feats, crs_name="urn:ogc:def:crs:EPSG::32633")
    got, crs = read_polygons(path)
    assert crs.to_epsg() == 32633 and [f.id for f in got] == ["1", "2", "3"]
    assert got[2].geometry.equals(SQUARES[2])
    assert read_geojson(path)[1] == crs


# --------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(RoiError, match=r"polygon file not found: .*nope\.gpkg"):
        read_polygons(tmp_path / "nope.gpkg")


def test_unreadable_file(tmp_path):
    bad = tmp_path / "junk.gpkg"
    bad.write_text("not a GeoPackage")
    with pytest.raises(RoiError, match=r"cannot read polygon file junk\.gpkg") as e:
        read_polygons(bad)
    assert "\n" not in str(e.value)


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_layer_without_crs(tmp_path):
    path = write_layer(tmp_path / "nocrs.fgb", SQUARES, crs=None)
    with pytest.raises(CrsError, match=r"layer 'nocrs' of nocrs\.fgb has no CRS"):
        read_polygons(path)


def test_layer_without_polygons(tmp_path):
    path = write_layer(tmp_path / "p.gpkg", [Point(1, 2), Point(3, 4)], layer="pts", kind="Point")
    with pytest.raises(RoiError, match=r"no polygons in layer 'pts' of p\.gpkg"):
        read_polygons(path)


def test_geojson_without_polygons(tmp_path):
    path = geojson(tmp_path / "p.geojson", [{"type": "Feature", "geometry": mapping(Point(1, 2))}])
    with pytest.raises(RoiError, match=r"no polygons in p\.geojson"):
        read_polygons(path)


def test_duplicate_ids(tmp_path):
    feats = [{"type": "Feature", "id": 5, "geometry": mapping(s)} for s in SQUARES[:2]]
    with pytest.raises(RoiError, match=r"ids are not unique in p\.geojson: 5"):
        read_polygons(geojson(tmp_path / "p.geojson", feats))


def test_layer_does_not_apply_to_geojson(tmp_path):
    path = geojson(tmp_path / "p.geojson", [{"type": "Feature", "geometry": mapping(SQUARES[0])}])
    with pytest.raises(ParameterError, match="--layer does not apply to GeoJSON"):
        read_polygons(path, "x")


def test_bad_geojson_crs(tmp_path):
    feats = [{"type": "Feature", "geometry": mapping(SQUARES[0])}]
    with pytest.raises(CrsError, match="unknown CRS"):
        read_polygons(geojson(tmp_path / "p.geojson", feats, crs_name="EPSG:999999"))
