"""Polygon layers for `rs-edit augment`: one feature per polygon, with its id and attributes.

GeoJSON (`.geojson`, `.json`) is read by hand with `roi.py`'s rules, so that an ROI and a polygon
layer agree on its CRS (RFC 7946: EPSG:4326; the 2008 spec's `crs` member is honoured). Every
other vector format GDAL reads (GeoPackage, Shapefile, FlatGeobuf, File Geodatabase, ...) goes
through pyogrio, which bundles GDAL in its wheel. Only Polygon and MultiPolygon features are kept.

Feature ids name the samples on disk, so they must not change between runs: GeoJSON uses the
feature's `id`, else an `id`/`fid` property, else its 1-based position; OGR formats use the
feature id GDAL reports (a GeoPackage's primary key). Both are made filesystem-safe.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.errors
import pyogrio.raw
import shapely
from pyproj import CRS as ProjCRS
from pyproj.exceptions import CRSError as ProjCRSError
from shapely.geometry.base import BaseGeometry

from .errors import CrsError, ParameterError, RoiError
from .roi import geojson_crs, geometries, load_json, polygonal

GEOJSON_SUFFIXES = (".geojson", ".json")
_POLYGONAL = ("Polygon", "MultiPolygon")
_INTEGER_TYPES = ("OFTInteger", "OFTInteger64")
# Everything pyogrio raises for a file or layer it cannot read.
_OGR_ERRORS = (
    pyogrio.errors.DataSourceError,
    pyogrio.errors.DataLayerError,
    pyogrio.errors.FieldError,
    pyogrio.errors.FeatureError,
    pyogrio.errors.GeometryError,
    pyogrio.errors.CRSError,
)


@dataclass
class Feature:
    id: str
    geometry: BaseGeometry  # polygonal, in the layer's CRS
    properties: dict


def read_polygons(
    path: str | os.PathLike, layer: str | None = None
) -> tuple[list[Feature], ProjCRS]:
    """(features, CRS) of a polygon layer; only polygonal features; ids unique."""
    path = Path(path)
    if not path.exists():
        raise RoiError(f"polygon file not found: {path}")
    if path.suffix.lower() in GEOJSON_SUFFIXES:
        if layer is not None:
            raise ParameterError(f"--layer does not apply to GeoJSON ({path.name} has one layer)")
        feats, crs = _read_geojson(path)
        where = path.name
    else:
        layer = _pick_layer(path, layer)
        feats, crs = _read_ogr(path, layer)
        where = f"layer {layer!r} of {path.name}"
    if not feats:
        raise RoiError(f"no polygons in {where}")
    ids = [f.id for f in feats]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise RoiError(f"polygon ids are not unique in {where}: {', '.join(dupes[:5])}")
    return feats, crs


def _safe_id(value) -> str:
    """A feature id usable in file names (at most 64 characters)."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", str(value)).strip("-.")
    return text[:64] or "polygon"


# ---------------------------------------------------------------------------------- GeoJSON


def _read_geojson(path: Path) -> tuple[list[Feature], ProjCRS]:
    obj = load_json(path)
    if not isinstance(obj, dict) or "type" not in obj:
        raise RoiError(f"{path.name} is not GeoJSON: expected an object with a 'type' member")
    crs = geojson_crs(obj)
    items = obj.get("features") if obj.get("type") == "FeatureCollection" else [obj]
    if not isinstance(items, list):
        raise RoiError("GeoJSON FeatureCollection has no 'features' list")
    feats = []
    for i, item in enumerate(items, start=1):
        props = (item.get("properties") or {}) if isinstance(item, dict) else {}
        geoms = [g for g in geometries(item, []) if g.geom_type in _POLYGONAL]
        if not geoms:
            continue
        geometry = polygonal(shapely.make_valid(shapely.union_all(geoms)))
        if geometry.is_empty:
            continue
        fid = item.get("id") if isinstance(item, dict) else None
        if fid is None:
            fid = props.get("id", props.get("fid", i))
        feats.append(Feature(_safe_id(fid), geometry, dict(props)))
    return feats, crs


# ------------------------------------------------------------------------------ OGR (pyogrio)


def _pick_layer(path: Path, layer: str | None) -> str:
    """The layer to read: the one asked for, or the only one with geometries."""
    try:
        listed = pyogrio.list_layers(path)
    except _OGR_ERRORS as exc:
        raise RoiError(f"cannot read polygon file {path.name}: {_one_line(exc)}") from exc
    # Attribute-only tables (a GeoPackage's non-spatial tables) have no geometry type.
    names = [str(name) for name, kind in listed if kind is not None]
    if not names:
        raise RoiError(f"{path.name} has no layers with geometries")
    if layer is None:
        if len(names) > 1:
            raise RoiError(f"{path.name} has several layers ({', '.join(names)}): give --layer")
        return names[0]
    if layer not in names:
        raise RoiError(f"no layer {layer!r} in {path.name} (layers: {', '.join(names)})")
    return layer


def _read_ogr(path: Path, layer: str) -> tuple[list[Feature], ProjCRS]:
    where = f"layer {layer!r} of {path.name}"
    try:
        fid_column = pyogrio.read_info(path, layer=layer).get("fid_column") or None
        meta, fids, wkb, columns = pyogrio.raw.read(
            path, layer=layer, return_fids=True, force_2d=True, datetime_as_string=True
        )
    except _OGR_ERRORS as exc:
        raise RoiError(f"cannot read {where}: {_one_line(exc)}") from exc
    crs = _layer_crs(meta.get("crs"), where)
    names = [str(n) for n in meta["fields"]]
    kinds = list(meta.get("ogr_types") or [""] * len(names))
    values = [_python_values(col, kind) for col, kind in zip(columns, kinds, strict=True)]
    feats = []
    for row, fid in enumerate(fids):
        geometry = _geometry(wkb[row], where)
        if geometry is None:
            continue
        props = {fid_column: int(fid)} if fid_column else {}
        props.update((name, col[row]) for name, col in zip(names, values, strict=True))
        feats.append(Feature(_safe_id(int(fid)), geometry, props))
    return feats, crs


def _layer_crs(text: str | None, where: str) -> ProjCRS:
    if not text:
        raise CrsError(f"{where} has no CRS: assign one (e.g. in QGIS) and save it again")
    try:
        return ProjCRS.from_user_input(text)
    except ProjCRSError as exc:
        raise CrsError(f"unknown CRS in {where}: {str(text)[:200]}") from exc


def _geometry(blob, where: str) -> BaseGeometry | None:
    """A valid polygonal geometry from WKB; None for empty or non-polygonal ones (skipped)."""
    if blob is None:
        return None
    try:
        geometry = shapely.from_wkb(blob)
    except shapely.errors.ShapelyError as exc:
        raise RoiError(f"{where} has a geometry that is not valid WKB: {exc}") from exc
    if geometry.geom_type not in _POLYGONAL:
        return None
    geometry = polygonal(shapely.make_valid(geometry))
    return None if geometry.is_empty else geometry


def _python_values(column: np.ndarray, ogr_type: str) -> list:
    """Plain Python values; NULL as None (pyogrio reads NULL integers as float NaN)."""
    out = []
    for value in column.tolist():
        if isinstance(value, float) and math.isnan(value):
            value = None
        elif isinstance(value, float) and ogr_type in _INTEGER_TYPES:
            value = int(value)
        out.append(value)
    return out


def _one_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return lines[0][:300]


__all__ = ["Feature", "GEOJSON_SUFFIXES", "read_polygons"]
