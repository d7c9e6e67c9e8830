"""The region of interest: GeoJSON polygons or a mask raster -> pixels of the image grid
(`resolve_roi`), and the context window around it (`context_window`).

Everything is brought to the image's pixel space once (`Roi.pixels`), so that only the window
being edited is ever rasterized: memory does not grow with the scene.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pyproj.exceptions import CRSError as ProjCRSError
from pyproj.exceptions import ProjError
from rasterio import features
from rasterio.errors import RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window
from shapely import affinity
from shapely.errors import GEOSException
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from .errors import CrsError, GridMismatchError, ParameterError, RasterError, RoiError
from .raster import RasterInfo, gdal_env, inspect_raster, nodata_pixels

WGS84 = ProjCRS.from_epsg(4326)
_POLYGONAL = ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class Roi:
    """An ROI on one raster's grid: polygons in pixel coordinates, or a mask raster on the grid."""

    bbox: Window  # integer pixel bounding box on the full raster, clipped to it
    pixels: BaseGeometry | None = None  # polygons in pixel coordinates (col, row)
    mask_path: str | None = None
    clipped: bool = False  # part of the ROI lay outside the raster

    def rasterize(self, window: Window) -> np.ndarray:
        """Boolean mask of the ROI on `window` of the raster grid."""
        shape_ = (int(window.height), int(window.width))
        if self.mask_path is not None:
            return _read_mask(self.mask_path, window)
        offset = Affine.translation(window.col_off, window.row_off)
        mask = features.rasterize(
            [self.pixels],
            out_shape=shape_,
            transform=offset,
            fill=0,
            default_value=1,
            dtype="uint8",
        ).astype(bool)
        if not mask.any():
            # Slivers thinner than a pixel cover no pixel centre: take every pixel they touch.
            mask = features.rasterize(
                [self.pixels], out_shape=shape_, transform=offset, all_touched=True, dtype="uint8"
            ).astype(bool)
        return mask

    def clusters(self, gap_px: int) -> list[Roi]:
        """The ROI split into groups of polygons lying more than `gap_px` apart (bounding box to
        bounding box), largest first, so that far-apart polygons are edited in windows of their
        own: the cost then grows with the ROI's area, not with the distance between its parts.
        A mask raster ROI stays one group."""
        if self.pixels is None:
            return [self]
        parts = [g for g in getattr(self.pixels, "geoms", [self.pixels]) if g.area > 0]
        if len(parts) < 2:
            return [self]
        groups = _group_boxes([p.bounds for p in parts], gap_px)
        if len(groups) == 1:
            return [self]
        out = []
        for members in groups:
            geometry = shapely.union_all([parts[i] for i in members])
            col0, row0, col1, row1 = geometry.bounds
            c0, r0 = max(0, math.floor(col0)), max(0, math.floor(row0))
            c1 = min(self.bbox.col_off + self.bbox.width, math.ceil(col1))
            r1 = min(self.bbox.row_off + self.bbox.height, math.ceil(row1))
            bbox = Window(c0, r0, c1 - c0, r1 - r0)
            out.append(Roi(bbox=bbox, pixels=geometry, clipped=self.clipped))
        return sorted(out, key=lambda r: -r.pixels.area)


def _group_boxes(boxes: list[tuple[float, float, float, float]], gap: float) -> list[list[int]]:
    """Indices of boxes (x0, y0, x1, y1) grouped so that the groups' bounding boxes, grown by
    gap / 2 on every side, do not overlap (windows of `gap / 2` context never share a pixel)."""
    grow = gap / 2
    rects = [box(x0 - grow, y0 - grow, x1 + grow, y1 + grow) for x0, y0, x1, y1 in boxes]
    while True:  # merging can make a box that reaches a third one: repeat until stable
        merged = shapely.union_all(rects)
        pieces = [box(*g.bounds) for g in getattr(merged, "geoms", [merged])]
        if sorted(p.bounds for p in pieces) == sorted(r.bounds for r in rects):
            break
        rects = pieces
    tree = shapely.STRtree(rects)
    groups: dict[int, list[int]] = {}
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        centre = shapely.Point((x0 + x1) / 2, (y0 + y1) / 2)
        owner = int(tree.query(centre, predicate="intersects")[0])
        groups.setdefault(owner, []).append(i)
    return list(groups.values())


def whole_image(info: RasterInfo) -> Roi:
    return Roi(
        bbox=Window(0, 0, info.width, info.height), pixels=box(0, 0, info.width, info.height)
    )


def resolve_roi(
    info: RasterInfo,
    roi_geojson: str | os.PathLike | dict | None = None,
    mask_path: str | os.PathLike | None = None,
) -> Roi:
    """The ROI in the raster's pixels: GeoJSON polygons, a mask raster, or the whole image."""
    if roi_geojson is not None and mask_path is not None:
        raise ParameterError("give either a GeoJSON ROI or a mask raster, not both")
    if roi_geojson is not None:
        return roi_from_geojson(roi_geojson, info)
    if mask_path is not None:
        return roi_from_mask(mask_path, info)
    return whole_image(info)


def context_window(bbox: Window, info: RasterInfo, context_px: int, snap_px: int = 0) -> Window:
    """The ROI's bounding box grown by `context_px` on each side, clipped to the raster; a side
    that ends up within `snap_px` of the raster's edge is taken to the edge (a strip that thin
    costs nothing to read and is context the edit and its realism guard would otherwise lack)."""
    c0 = max(0, int(bbox.col_off) - context_px)
    r0 = max(0, int(bbox.row_off) - context_px)
    c1 = min(info.width, int(bbox.col_off + bbox.width) + context_px)
    r1 = min(info.height, int(bbox.row_off + bbox.height) + context_px)
    c0, r0 = (0 if v <= snap_px else v for v in (c0, r0))
    c1 = info.width if info.width - c1 <= snap_px else c1
    r1 = info.height if info.height - r1 <= snap_px else r1
    return Window(c0, r0, c1 - c0, r1 - r0)


def roi_from_geojson(source: str | os.PathLike | dict, info: RasterInfo) -> Roi:
    """Polygons from GeoJSON (a path, GeoJSON text or a parsed object) in any CRS."""
    geometry, crs = read_geojson(source)
    if not info.georeferenced and info.gcp_count:
        raise CrsError(
            f"raster {Path(info.path).name} is georeferenced by {info.gcp_count} ground control "
            "points only, without a geotransform, so a GeoJSON ROI cannot be placed on it "
            "exactly: warp it first (gdalwarp), or give the ROI as a pixel mask raster"
        )
    if not info.georeferenced:
        raise CrsError(
            f"raster {Path(info.path).name} has no georeferencing, so a GeoJSON ROI cannot be "
            "placed on it: give the ROI as a pixel mask raster instead"
        )
    try:
        raster_crs = ProjCRS.from_user_input(info.crs.to_wkt())
    except ProjCRSError as exc:
        raise CrsError(f"the raster's CRS is unknown to PROJ: {info.crs.to_wkt()[:200]}") from exc
    projected = reproject(geometry, crs, raster_crs)
    pixels = affinity.affine_transform(projected, shapely_affine(~info.transform))
    return clip_to_raster(pixels, info)


def read_geojson(source: str | os.PathLike | dict) -> tuple[BaseGeometry, ProjCRS]:
    """Parse GeoJSON into one valid polygonal geometry and its CRS (EPSG:4326 unless stated)."""
    obj = load_json(source)
    if not isinstance(obj, dict) or "type" not in obj:
        raise RoiError("ROI is not GeoJSON: expected an object with a 'type' member")
    crs = geojson_crs(obj)
    found: list[str] = []
    try:
        polygons = [g for g in geometries(obj, found) if g.geom_type in _POLYGONAL]
    except RecursionError as exc:
        raise RoiError("ROI is not usable GeoJSON: it is nested too deeply") from exc
    if not polygons:
        kinds = ", ".join(sorted(set(found))) or "no geometry"
        raise RoiError(f"GeoJSON ROI has no polygons (found: {kinds})")
    geometry = polygonal(shapely.make_valid(shapely.union_all(polygons)))
    if geometry.is_empty:
        raise RoiError("GeoJSON ROI polygons are empty (zero area)")
    if crs.is_geographic:
        minx, miny, maxx, maxy = geometry.bounds
        if min(minx, miny) < -180.01 or maxx > 360.01 or max(abs(miny), abs(maxy)) > 90.01:
            raise RoiError(
                f"ROI coordinates ({minx:.6g}, {miny:.6g}, {maxx:.6g}, {maxy:.6g}) are not "
                "longitude/latitude; GeoJSON without a 'crs' member must be in EPSG:4326"
            )
    return geometry, crs


def load_json(source: str | os.PathLike | dict):
    if isinstance(source, dict):
        return source
    text = str(source)
    if not text.lstrip().startswith(("{", "[", '"')):
        path = Path(text)
        if not path.is_file():
            raise RoiError(f"ROI file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RoiError(f"cannot read ROI file {path}: {exc}") from exc
    try:
        return json.loads(text, parse_constant=_not_a_json_number)
    except json.JSONDecodeError as exc:
        raise RoiError(f"ROI is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise RoiError("ROI is not usable JSON: it is nested too deeply") from exc


def _not_a_json_number(token: str):
    """Python's json reads NaN and Infinity; JSON (and so GeoJSON) has no such numbers."""
    raise RoiError(f"ROI is not valid JSON: {token} is not a JSON number")


def geojson_crs(obj: dict) -> ProjCRS:
    """RFC 7946 has no 'crs' member (EPSG:4326); the 2008 spec's named CRS is still common."""
    member = obj.get("crs")
    if member is None:
        return WGS84
    try:
        props = member.get("properties", {}) if isinstance(member, dict) else {}
        props = props if isinstance(props, dict) else {}
        name = props.get("name") or (f"EPSG:{props['code']}" if "code" in props else None)
        if not name:
            raise CrsError(f"GeoJSON 'crs' member has no name: {json.dumps(member)[:200]}")
        return ProjCRS.from_user_input(name)
    except ProjCRSError as exc:
        raise CrsError(f"unknown CRS in GeoJSON ROI: {json.dumps(member)[:200]}") from exc


def geometries(obj, found: list[str]):
    """Yield shapely geometries from any GeoJSON object; record every geometry type seen."""
    if not isinstance(obj, dict):
        raise RoiError("GeoJSON ROI is malformed: expected objects inside it")
    kind = obj.get("type")
    if kind == "FeatureCollection":
        feats = obj.get("features")
        if not isinstance(feats, list):
            raise RoiError("GeoJSON FeatureCollection has no 'features' list")
        for feature in feats:
            yield from geometries(feature, found)
    elif kind == "Feature":
        if obj.get("geometry") is not None:
            yield from geometries(obj["geometry"], found)
    elif kind == "GeometryCollection":
        members = obj.get("geometries")
        if not isinstance(members, list):
            raise RoiError("GeoJSON GeometryCollection has no 'geometries' list")
        for geom in members:
            yield from geometries(geom, found)
    elif kind in ("Point", "MultiPoint", "LineString", "MultiLineString", *_POLYGONAL):
        found.append(kind)
        try:
            geometry = shape(obj)
        except (ValueError, TypeError, AttributeError, IndexError, KeyError, GEOSException) as exc:
            raise RoiError(f"GeoJSON {kind} has invalid coordinates: {exc}") from exc
        if not np.isfinite(shapely.get_coordinates(geometry)).all():
            raise RoiError(f"GeoJSON {kind} has coordinates that are not finite numbers")
        if kind in _POLYGONAL:
            _check_rings(kind, obj["coordinates"])
        yield geometry
    else:
        raise RoiError(f"unknown GeoJSON type: {str(kind)[:60]!r}")


def _check_rings(kind: str, coordinates) -> None:
    """RFC 7946: a ring has at least four positions and ends where it starts (shapely would
    quietly close an open one)."""
    polygons = coordinates if kind == "MultiPolygon" else [coordinates]
    try:
        for polygon in polygons:
            for ring in polygon:
                if len(ring) and (len(ring) < 4 or list(ring[0]) != list(ring[-1])):
                    raise RoiError(
                        f"GeoJSON {kind} has a ring that is not closed: a ring needs at least 4 "
                        "positions, the last one equal to the first (RFC 7946)"
                    )
    except TypeError as exc:  # null or a number where a list belongs (shapely reads it as empty)
        raise RoiError(f"GeoJSON {kind} has invalid coordinates: {exc}") from exc


def polygonal(geometry: BaseGeometry) -> BaseGeometry:
    """Keep the polygonal parts of a (repaired) geometry."""
    if geometry.geom_type in _POLYGONAL:
        return geometry
    parts = [g for g in getattr(geometry, "geoms", []) if g.geom_type in _POLYGONAL]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def reproject(geometry: BaseGeometry, src: ProjCRS, dst: ProjCRS) -> BaseGeometry:
    if src == dst:
        return geometry
    # Densify first so straight edges follow the curvature of the projection.
    cannot = f"ROI cannot be transformed from {src.name} to the raster's {dst.name}"
    try:
        transformer = Transformer.from_crs(src, dst, always_xy=True)
        minx, miny, maxx, maxy = geometry.bounds
        step = max(maxx - minx, maxy - miny) / 64.0
        if step > 0:
            geometry = shapely.segmentize(geometry, step)
        projected = shapely.transform(
            geometry, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
        )
        if not np.isfinite(shapely.get_coordinates(projected)).all():
            raise RoiError(cannot)
        return polygonal(shapely.make_valid(projected))
    except ProjError as exc:  # e.g. no transformation between another body's CRS and Earth's
        raise CrsError(f"{cannot}: {' '.join(str(exc).split())[:200]}") from exc
    except GEOSException as exc:  # e.g. coordinates too large to work with
        raise RoiError(f"{cannot}: {exc}") from exc


def shapely_affine(t: Affine) -> list[float]:
    return [t.a, t.b, t.d, t.e, t.c, t.f]


def clip_to_raster(pixels: BaseGeometry, info: RasterInfo) -> Roi:
    frame = box(0, 0, info.width, info.height)
    inside = pixels.intersection(frame)
    if inside.is_empty or inside.area == 0:
        raise RoiError(
            f"ROI lies outside the raster (ROI pixel bounds {_fmt(pixels.bounds)}, raster is "
            f"{info.width}x{info.height} pixels)"
        )
    clipped = inside.area < pixels.area * (1 - 1e-9)
    col0, row0, col1, row1 = inside.bounds
    c0, r0 = max(0, math.floor(col0)), max(0, math.floor(row0))
    c1, r1 = min(info.width, math.ceil(col1)), min(info.height, math.ceil(row1))
    return Roi(bbox=Window(c0, r0, c1 - c0, r1 - r0), pixels=inside, clipped=clipped)


def _fmt(bounds) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in bounds) + ")"


# --- ROI from a mask raster -------------------------------------------------------------------


def roi_from_mask(mask_path: str | os.PathLike, info: RasterInfo) -> Roi:
    """A mask raster on the image's grid: non-zero (and not nodata) = edit."""
    try:
        mask_info = inspect_raster(mask_path)
    except RasterError as exc:
        raise RoiError(f"ROI mask: {exc}") from exc
    check_same_grid(mask_info, info)
    bbox = _mask_bbox(mask_info)
    if bbox is None:
        raise RoiError(f"ROI mask {Path(mask_path).name} is empty (no non-zero pixels)")
    return Roi(bbox=bbox, mask_path=mask_info.path)


def check_same_grid(mask: RasterInfo, image: RasterInfo) -> None:
    """Same size, and the same CRS and geotransform wherever both rasters declare one."""
    if (mask.width, mask.height) != (image.width, image.height):
        raise GridMismatchError(
            f"ROI mask is {mask.width}x{mask.height} pixels but the image is "
            f"{image.width}x{image.height}: the mask must be on the image's grid"
        )
    # What both declare must agree; a mask without a CRS or a geotransform is a pixel grid.
    if mask.crs is not None and image.crs is not None and mask.crs != image.crs:
        raise GridMismatchError(
            f"ROI mask CRS ({mask.crs.to_string()}) differs from the image's "
            f"({image.crs.to_string()}): the mask must be on the image's grid"
        )
    both_placed = not mask.transform.is_identity and not image.transform.is_identity
    if both_placed and not image.same_transform(mask):
        raise GridMismatchError(
            "ROI mask geotransform differs from the image's: the mask must be on the "
            f"image's grid (mask {tuple(mask.transform)[:6]}, image {tuple(image.transform)[:6]})"
        )


def _mask_bbox(mask: RasterInfo) -> Window | None:
    """Bounding box of the non-zero pixels, scanning block by block (bounded memory)."""
    rows_any = np.zeros(mask.height, dtype=bool)
    cols_any = np.zeros(mask.width, dtype=bool)
    try:
        with gdal_env(), rasterio.open(mask.path) as src:
            for _, window in src.block_windows(1):
                block = _edit_pixels(src.read(1, window=window), mask.nodata)
                if block.any():
                    r0, c0 = int(window.row_off), int(window.col_off)
                    rows_any[r0 : r0 + block.shape[0]] |= block.any(axis=1)
                    cols_any[c0 : c0 + block.shape[1]] |= block.any(axis=0)
    except RasterioError as exc:
        raise RoiError(f"cannot read ROI mask {mask.path}: {exc}") from exc
    if not rows_any.any():
        return None
    rows, cols = np.flatnonzero(rows_any), np.flatnonzero(cols_any)
    return Window(
        int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)
    )


def _read_mask(path: str, window: Window) -> np.ndarray:
    with gdal_env(), rasterio.open(path) as src:
        return _edit_pixels(src.read(1, window=window), src.nodata)


def _edit_pixels(values: np.ndarray, nodata: float | None) -> np.ndarray:
    edit = (values != 0) & ~nodata_pixels(values, nodata)
    if values.dtype.kind == "f":
        edit &= ~np.isnan(values)
    return edit
