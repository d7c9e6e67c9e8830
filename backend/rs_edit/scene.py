"""A procedural, plausible-looking aerial RGB scene for `rs-edit demo` and the tests.

The layout (a patchwork of fields, a meandering river, two or three roads, a village of building
blocks around a road crossing) is built as shapely geometry in pixel units, moved onto a
georeferenced grid and rasterized with rasterio. Per-class colours, row and canopy texture,
shadows, noise and a slight blur then make it read as imagery rather than vector art. Everything is
drawn from one seeded numpy Generator, so a seed always gives the same scene.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
from pyproj import Transformer
from rasterio import features as rio_features
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import Affine, array_bounds
from scipy import ndimage
from shapely import affinity
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient
from shapely.ops import nearest_points, unary_union

from .files import atomic_path

MIN_SIZE = 32
ROI_TARGET_FRACTION = 0.2  # the ROI aims at a fifth of the scene: well inside the 10-30 % promised

# Field kinds: (probability, candidate RGB colours, row-texture amplitude range).
_FIELD_KINDS = (
    (0.34, ((78, 112, 52), (96, 128, 60), (110, 140, 70), (68, 100, 48)), (0.06, 0.12)),  # crop
    (0.14, ((176, 164, 108), (160, 150, 98), (190, 178, 128)), (0.05, 0.09)),  # ripe cereal
    (0.26, ((132, 108, 82), (118, 96, 74), (148, 124, 96), (104, 86, 66)), (0.08, 0.14)),  # soil
    (0.18, ((120, 145, 85), (105, 132, 75), (138, 152, 96)), (0.0, 0.0)),  # pasture
    (0.08, ((46, 70, 40), (55, 80, 45)), (0.0, 0.0)),  # woodland
)
_WOODLAND = 4
_CANOPY = (44, 68, 38)
_GARDEN = (92, 112, 66)
_RIVER_SHALLOW = (74, 108, 100)
_RIVER_DEEP = (38, 70, 82)
_ASPHALT = (108, 108, 112)
_GRAVEL = (156, 144, 122)
_TILED_ROOFS = ((168, 78, 60), (150, 70, 56), (182, 98, 72), (138, 84, 70))  # gabled
_FLAT_ROOFS = ((118, 118, 124), (150, 150, 152), (92, 94, 100))  # metal, concrete
_ROOFS = _TILED_ROOFS + _FLAT_ROOFS


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays have no boolean ==
class Scene:
    image: np.ndarray  # (3, H, W) uint8, band order R, G, B
    transform: Affine  # north-up, pixel size `pixel_size` metres
    crs: CRS  # a projected CRS
    features: dict  # name -> shapely geometry in `crs`: river, roads, buildings, fields


@dataclass
class _Layout:
    """Geometry in pixel units (x = column, y = row, both from the top-left corner)."""

    river: BaseGeometry
    river_halfwidth: float
    roads: list  # (footprint, paved)
    fields: list  # (footprint, kind, rotation of its rows in radians)
    buildings: list  # (footprint, centre x, centre y, axis angle in radians)


def make_scene(
    size: int = 96,
    *,
    seed: int = 0,
    pixel_size: float = 2.0,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (500000.0, 5500000.0),
) -> Scene:
    """A `size` x `size` RGB scene whose top-left corner is at `origin` (x, y) in `crs`."""
    if int(size) != size or size < MIN_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_SIZE}, got {size!r}")
    if not (math.isfinite(pixel_size) and pixel_size > 0):
        raise ValueError(f"pixel_size must be a positive number of metres, got {pixel_size!r}")
    crs_obj = CRS.from_user_input(crs)
    if not crs_obj.is_projected:
        raise ValueError(f"crs must be a projected CRS (metres), got {crs!r}")
    size = int(size)
    transform = Affine(pixel_size, 0.0, float(origin[0]), 0.0, -pixel_size, float(origin[1]))
    rng = np.random.default_rng(seed)
    layout = _layout(rng, size)
    image = _paint(rng, size, layout, transform)

    def world(geom: BaseGeometry) -> BaseGeometry:
        return affinity.affine_transform(
            geom, [transform.a, transform.b, transform.d, transform.e, transform.c, transform.f]
        )

    # Parcels sharing an edge would make an invalid MultiPolygon: each gives up a 0.25-pixel verge.
    parcels = [f[0].buffer(-0.25, join_style="mitre") for f in layout.fields]
    feats = {
        "river": world(layout.river),
        "roads": world(unary_union([g for g, _ in layout.roads])),
        "buildings": world(MultiPolygon([b[0] for b in layout.buildings])),
        "fields": world(MultiPolygon([p for p in parcels if not p.is_empty])),
    }
    return Scene(image=image, transform=transform, crs=crs_obj, features=feats)


# --------------------------------------------------------------------------------------- layout


def _unit(angle: float) -> tuple[np.ndarray, np.ndarray]:
    d = np.array([math.cos(angle), math.sin(angle)])
    return d, np.array([-d[1], d[0]])


def _layout(rng: np.random.Generator, size: int) -> _Layout:
    frame = box(0, 0, size, size)
    river_line, river_hw = _river_line(rng, size)
    river = river_line.buffer(river_hw, quad_segs=8).intersection(frame)

    # The village sits at a road crossing well away from the river.
    crossing, best = None, -1.0
    for _ in range(40):
        p = Point(rng.uniform(0.22, 0.78, 2) * size)
        dist = river_line.distance(p)
        if dist > best:
            crossing, best = p, dist
        if dist > river_hw + 0.2 * size:
            break
    c = np.array([crossing.x, crossing.y])

    main_hw = float(np.clip(0.012 * size, 1.2, 3.5))
    a1 = rng.uniform(-0.35, 0.35) + (math.pi / 2 if rng.random() < 0.5 else 0.0)
    a2 = a1 + math.pi / 2 + rng.uniform(-0.25, 0.25)
    lines = [
        (_road_line(rng, size, c, a1, 0.01), main_hw, True, a1),
        (_road_line(rng, size, c, a2, 0.01), main_hw, True, a2),
    ]
    if rng.random() < 0.6:  # a farm track leaving the first road
        d1, _ = _unit(a1)
        start = c + d1 * rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.4) * size
        a3 = a1 + rng.choice([-1.0, 1.0]) * (math.pi / 2 + rng.uniform(-0.4, 0.4))
        track = _road_line(rng, size, start, a3, 0.025, both_ways=False)
        lines.append((track, max(1.0, 0.7 * main_hw), False, a3))
    roads = [(ln.buffer(hw, quad_segs=4).intersection(frame), paved) for ln, hw, paved, _ in lines]

    fields = _fields(rng, size, a1 + rng.uniform(-0.05, 0.05), frame)
    buildings = _buildings(rng, size, c, lines[:2], river, [g for g, _ in roads])
    return _Layout(river, river_hw, roads, fields, buildings)


def _river_line(rng: np.random.Generator, size: int) -> tuple[LineString, float]:
    """A centreline crossing the scene, bent by two sines so that it meanders."""
    angle = rng.uniform(-0.45, 0.45) + (math.pi / 2 if rng.random() < 0.5 else 0.0)
    d, n = _unit(angle)
    mid = size / 2 + n * rng.uniform(-0.25, 0.25) * size
    s = np.linspace(-0.85, 0.85, 240) * size
    off = np.zeros_like(s)
    for amp, cycles in (
        (rng.uniform(0.06, 0.12), rng.uniform(0.5, 1.0)),
        (rng.uniform(0.02, 0.05), rng.uniform(1.2, 2.2)),
    ):
        off += amp * size * np.sin(2 * np.pi * cycles * s / size + rng.uniform(0, 2 * np.pi))
    pts = mid + s[:, None] * d + off[:, None] * n
    return LineString(pts), float(np.clip(0.03 * size, 2.0, 14.0))


def _road_line(
    rng: np.random.Generator,
    size: int,
    start: np.ndarray,
    angle: float,
    wobble: float,
    both_ways: bool = True,
) -> LineString:
    """A nearly straight road through `start`, long enough to leave the scene."""
    d, n = _unit(angle)
    t = np.linspace(-1.5 if both_ways else 0.0, 1.5, 80) * size
    k, ph = rng.uniform(0.5, 1.5) * 2 * np.pi / size, rng.uniform(0, 2 * np.pi)
    off = wobble * size * (np.sin(k * t + ph) - np.sin(ph))  # zero at `start`: roads still cross
    return LineString(start + t[:, None] * d + off[:, None] * n)


def _fields(rng: np.random.Generator, size: int, angle: float, frame: Polygon) -> list:
    """Split a rotated square covering the scene into rectangles, aligned with the main road."""
    target = float(np.clip(0.22 * size, 10.0, 110.0))
    half = 0.75 * size  # the inscribed circle of the square covers the scene whatever the angle
    rects, stack = [], [(-half, -half, half, half)]
    while stack:
        x0, y0, x1, y1 = stack.pop()
        w, h = x1 - x0, y1 - y0
        if max(w, h) < target * rng.uniform(0.8, 1.6):
            rects.append((x0, y0, x1, y1))
        elif w >= h:
            xs = x0 + w * rng.uniform(0.3, 0.7)
            stack += [(x0, y0, xs, y1), (xs, y0, x1, y1)]
        else:
            ys = y0 + h * rng.uniform(0.3, 0.7)
            stack += [(x0, y0, x1, ys), (x0, ys, x1, y1)]
    probs = np.array([k[0] for k in _FIELD_KINDS])
    out = []
    for r in rects:
        poly = affinity.rotate(box(*r), angle, origin=(0, 0), use_radians=True)
        poly = affinity.translate(poly, size / 2, size / 2).intersection(frame)
        kind = int(rng.choice(len(_FIELD_KINDS), p=probs / probs.sum()))
        rows = angle + (math.pi / 2 if rng.random() < 0.5 else 0.0)
        if isinstance(poly, Polygon) and poly.area >= 1.0:
            out.append((poly, kind, rows))
    return out


def _building_size(size: int) -> float:
    return float(np.clip(0.045 * size, 3.5, 9.0))


def _buildings(
    rng: np.random.Generator,
    size: int,
    c: np.ndarray,
    roads: list,
    river: BaseGeometry,
    road_polys: list,
) -> list:
    """Rectangular blocks lining the two main roads, thickest near their crossing."""
    bsize = _building_size(size)
    gap = max(1.0, 0.3 * bsize)
    radius = float(np.clip(0.28 * size, 14.0, 220.0))
    target = int(np.clip(0.12 * size, 8, 90))
    blocked = unary_union([river.buffer(gap + 1.0)] + [p.buffer(gap) for p in road_polys])
    shapely.prepare(blocked)
    inner = box(1, 1, size - 1, size - 1)
    placed: list = []
    for _ in range(target * 10):
        if len(placed) >= target:
            break
        _, hw, _, angle = roads[int(rng.integers(2))]
        d, n = _unit(angle)
        length = bsize * rng.uniform(1.0, 1.8)
        depth = bsize * rng.uniform(0.7, 1.0)
        if rng.random() < 0.15:  # the odd barn or warehouse
            length, depth = length * 1.6, depth * 1.5
        back = 0 if rng.random() < 0.7 else 1  # second row behind the street front
        setback = hw + gap + depth / 2 + back * (depth + gap + bsize * rng.uniform(0.2, 0.8))
        along = float(np.clip(rng.normal(0.0, radius / 2), -radius, radius))
        centre = c + along * d + rng.choice([-1.0, 1.0]) * setback * n
        rot = angle + rng.normal(0.0, 0.04)
        rect = affinity.rotate(
            box(-length / 2, -depth / 2, length / 2, depth / 2),
            rot,
            origin=(0, 0),
            use_radians=True,
        )
        rect = affinity.translate(rect, *centre)
        if not inner.contains(rect) or blocked.intersects(rect):
            continue
        if placed and shapely.distance([p[0] for p in placed], rect).min() < gap:
            continue
        placed.append((rect, float(centre[0]), float(centre[1]), rot))
    return placed


# ---------------------------------------------------------------------------------------- paint


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Unit-variance noise varying over about size/cells pixels (cheap at any smoothness)."""
    cells = max(2, int(cells))
    coarse = rng.standard_normal((cells + 1, cells + 1))
    fine = ndimage.zoom(coarse, size / cells, order=3)[:size, :size].astype(np.float32)
    return (fine - fine.mean()) / (fine.std() + 1e-6)


def _paint(rng: np.random.Generator, size: int, lay: _Layout, transform: Affine) -> np.ndarray:
    def world(geom: BaseGeometry) -> BaseGeometry:
        return affinity.affine_transform(
            geom, [transform.a, transform.b, transform.d, transform.e, transform.c, transform.f]
        )

    def burn(shapes: list) -> np.ndarray:
        shapes = [(world(g), v) for g, v in shapes if not g.is_empty]
        if not shapes:
            return np.zeros((size, size), np.int32)
        return rio_features.rasterize(
            shapes, out_shape=(size, size), transform=transform, fill=0, dtype="int32"
        )

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    fine = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 1.2)
    fine /= fine.std() + 1e-6  # crown-sized blobs for canopy and gardens

    # Fields: per-field colour, rows along the field, mottling within it, darker boundaries.
    n = len(lay.fields)
    colour = np.empty((n + 1, 3), np.float32)
    colour[0] = _FIELD_KINDS[3][1][0]
    amp, period, theta, mottle = (np.zeros(n + 1, np.float32) for _ in range(4))
    period[:] = 3.0
    for i, (_, kind, rows) in enumerate(lay.fields, start=1):
        _, palette, (lo, hi) = _FIELD_KINDS[kind]
        colour[i] = np.array(palette[int(rng.integers(len(palette)))]) + rng.normal(0, 5, 3)
        amp[i], period[i], theta[i] = rng.uniform(lo, hi), rng.uniform(2.2, 4.5), rows
        mottle[i] = 0.09 if kind == 3 else 0.04
    labels = burn([(f[0], i) for i, f in enumerate(lay.fields, start=1)])
    phase = (xx * np.cos(theta[labels]) + yy * np.sin(theta[labels])) / period[labels]
    shade = 1 + amp[labels] * np.sin(2 * np.pi * phase)
    shade += mottle[labels] * _smooth_noise(rng, size, max(4, size // 12))
    img = colour[labels] * shade[..., None]
    edge = np.zeros((size, size), bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    img[edge] *= np.float32(0.82)
    woods = np.isin(labels, [i for i, f in enumerate(lay.fields, start=1) if f[1] == _WOODLAND])

    # Gardens round the houses (a ragged edge, not a buffer), then trees in woods, gardens and
    # along the river banks.
    river = burn([(lay.river, 1)]).astype(bool)
    blabels = burn([(b[0], i) for i, b in enumerate(lay.buildings, start=1)])
    built = blabels > 0
    bsize = _building_size(size)
    reach = bsize * (0.9 + 0.35 * _smooth_noise(rng, size, max(4, size // 6)))
    gardens = ndimage.distance_transform_edt(~built) < reach
    img[gardens] = np.array(_GARDEN, np.float32) * (1 + 0.06 * fine[gardens, None])
    bank = ndimage.distance_transform_edt(~river) < 0.6 * lay.river_halfwidth + 2.5
    clumps = _smooth_noise(rng, size, max(4, size // 10))
    trees = woods | (bank & (clumps > -0.2)) | (gardens & (fine > 0.9))
    trees &= ~river
    img[trees] = np.array(_CANOPY, np.float32) * (1 + 0.22 * fine[trees, None])

    # River: darker and bluer away from the banks.
    depth = np.clip(ndimage.distance_transform_edt(river) / (0.7 * lay.river_halfwidth), 0, 1)
    water = (
        np.array(_RIVER_SHALLOW, np.float32) * (1 - depth[..., None])
        + np.array(_RIVER_DEEP, np.float32) * depth[..., None]
    )
    img[river] = water[river]

    for geom, paved in lay.roads:
        mask = burn([(geom, 1)]).astype(bool)
        base = np.array(_ASPHALT if paved else _GRAVEL, np.float32)
        img[mask] = base * (1 + 0.03 * fine[mask, None])

    # Buildings: shadow towards the north-west (sun in the south-east), then the roofs.
    k = max(1, round(0.3 * bsize))
    shadow = np.zeros_like(built)
    shadow[:-k, :-k] = built[k:, k:]
    img[shadow & ~built] *= np.float32(0.5)
    m = len(lay.buildings)
    roof = np.empty((m + 1, 3), np.float32)
    cx, cy, ux, uy, ridge = (np.zeros(m + 1, np.float32) for _ in range(5))
    for i, (_, x, y, rot) in enumerate(lay.buildings, start=1):
        j = int(rng.integers(len(_ROOFS)))
        roof[i] = np.array(_ROOFS[j]) + rng.normal(0, 6, 3)
        cx[i], cy[i], ux[i], uy[i] = x, y, -math.sin(rot), math.cos(rot)
        ridge[i] = 0.13 if j < len(_TILED_ROOFS) else 0.0
    b = blabels[built]
    side = (xx[built] - cx[b]) * ux[b] + (yy[built] - cy[b]) * uy[b]
    lit = 1 + np.where(side < 0, ridge[b], -ridge[b])  # two roof planes lit differently
    img[built] = roof[b] * lit[:, None]

    # Imaging: gentle illumination drift, grain, a little blur, then sensor noise.
    img *= (1 + 0.04 * _smooth_noise(rng, size, 4))[..., None]
    img += rng.normal(0, 3.0, (size, size, 1)).astype(np.float32)  # luminance grain
    img += rng.normal(0, 1.5, (size, size, 3)).astype(np.float32)  # colour grain
    img = ndimage.gaussian_filter(img, sigma=(0.7, 0.7, 0))
    img += rng.normal(0, 1.2, img.shape).astype(np.float32)
    return np.ascontiguousarray(np.clip(np.rint(img), 0, 255).astype(np.uint8).transpose(2, 0, 1))


# ------------------------------------------------------------------------------------- writing


def write_scene(scene: Scene, path: str | os.PathLike) -> None:
    """Write `scene` as an RGB GeoTIFF; a temporary file next to `path` is renamed into place."""
    path = Path(path)
    _, h, w = scene.image.shape
    profile = {
        "driver": "GTiff",
        "dtype": "uint8",
        "count": 3,
        "width": w,
        "height": h,
        "crs": scene.crs,
        "transform": scene.transform,
        "compress": "deflate",
        "photometric": "RGB",
    }
    if min(h, w) >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(scene.image)
        dst.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        for i, name in enumerate(("red", "green", "blue"), start=1):
            dst.set_band_description(i, name)


# ----------------------------------------------------------------------------------------- ROI


def roi_geojson(scene: Scene, *, feature: str = "buildings", to_wgs84: bool = True) -> dict:
    """One polygon over part of `feature`, inside the scene, covering about a fifth of it.

    GeoJSON in EPSG:4326 (RFC 7946: lon/lat, no crs member) when `to_wgs84`, else in the scene
    CRS with a legacy named "crs" member.
    """
    if feature not in scene.features:
        raise ValueError(f"unknown feature {feature!r}; choose from {sorted(scene.features)}")
    _, h, w = scene.image.shape
    west, south, east, north = array_bounds(h, w, scene.transform)
    res = abs(scene.transform.a)
    margin = max(2.0, 0.04 * min(h, w)) * res
    inset = box(west + margin, south + margin, east - margin, north - margin)
    scene_area = (east - west) * (north - south)

    # Seed: the part of the feature within a disc round its anchor (the village centre for
    # buildings, the point nearest the scene centre otherwise); convex so every buffer is too.
    geom = scene.features[feature]
    centre = Point((west + east) / 2, (south + north) / 2)
    if geom.is_empty:
        seed = centre
    else:
        anchor = geom.centroid if feature == "buildings" else centre
        anchor = nearest_points(geom, anchor)[0]
        seed = geom.intersection(anchor.buffer(0.12 * min(east - west, north - south)))
        seed = seed.convex_hull if not seed.is_empty else anchor

    def grown(d: float) -> BaseGeometry:
        return seed.buffer(d, quad_segs=8).intersection(inset)

    lo, hi = -(east - west), east - west  # area of grown(d) increases with d: bisect
    for _ in range(40):
        mid = (lo + hi) / 2
        if grown(mid).area < ROI_TARGET_FRACTION * scene_area:
            lo = mid
        else:
            hi = mid
    roi = grown(hi)
    if not isinstance(roi, Polygon):  # cannot happen for convex pieces; be safe anyway
        roi = roi.convex_hull

    if to_wgs84:
        to_ll = Transformer.from_crs(scene.crs.to_wkt(), "EPSG:4326", always_xy=True)
        x, y = np.asarray(roi.exterior.coords).T  # a convex polygon: no holes to carry
        roi = Polygon(np.column_stack(to_ll.transform(x, y)))
        ndigits = 8
    else:
        ndigits = 3
    roi = orient(roi, sign=1.0)  # RFC 7946: exterior ring counter-clockwise
    ring = [[round(float(x), ndigits), round(float(y), ndigits)] for x, y in roi.exterior.coords]
    out = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"name": "roi", "feature": feature},
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        ],
    }
    if not to_wgs84:
        epsg = scene.crs.to_epsg()
        name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else scene.crs.to_wkt()
        out["crs"] = {"type": "name", "properties": {"name": name}}
    return out
