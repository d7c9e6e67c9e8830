"""An example image for "make this look like that": checked, read at the tile's resolution and
in the tile's bands and model range.

`plan_example` does everything that needs no pixels (so the job API can refuse a bad example at
submission): the raster header, the polygons of it to use (`reference_roi`), which of its bands
stand for which of the tile's, and the scale that brings its ground sample distance to the
tile's. `load_example` then reads it once per edit, resampled by GDAL (averaging when it
shrinks), and `example_for_tile` maps it into each window's model range.

Ground sample distance is measured on the ground, not in CRS units: the pixel's neighbours are
taken to the CRS's geographic coordinates and their distances measured on its ellipsoid, so a
degree-based, a Web Mercator and a UTM raster compare correctly.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pyproj.exceptions import CRSError as ProjCRSError
from rasterio import features
from rasterio.enums import Resampling
from rasterio.windows import Window

from .bands import BandScaling, rgb_bands
from .errors import CrsError, InputError, ParameterError, RasterError
from .raster import RasterInfo, gdal_env, inspect_raster
from .roi import Roi, roi_from_geojson

MAX_EXAMPLE_READ = 8192 * 8192  # pixels of the example read (before resampling)
MAX_EXAMPLE_PIXELS = 2048 * 2048  # pixels after resampling: more adds nothing to a patch pool
MIN_EXAMPLE_SIDE = 16  # px at the tile's resolution: fewer holds no patches worth the name


@dataclass(frozen=True)
class ExamplePlan:
    """What is known of an example without reading its pixels."""

    info: RasterInfo
    window: Window  # the part of the example read: its polygons' box, or all of it
    roi: Roi | None  # the polygons of it to use (None: all of it)
    bands: tuple[int, ...]  # 0-based example band for each of the tile's modelled bands
    scale: float  # example pixel size / tile pixel size (ground distances)
    size: tuple[int, int]  # (h, w) at the tile's resolution
    note: str  # how it was matched, for the log

    def describe(self) -> dict:
        """What the result's tags and the job report say of the example."""
        return {
            "file": Path(self.info.path).name,
            "window": [int(self.window.col_off), int(self.window.row_off),
                       int(self.window.width), int(self.window.height)],
            "polygons": self.roi is not None,
            "scale": round(self.scale, 4),
            "size": list(self.size),
        }  # fmt: skip


@dataclass(frozen=True)
class Example:
    """An example ready for the engine: the tile's bands, model range, the tile's resolution."""

    plan: ExamplePlan
    image: np.ndarray  # (tile's modelled bands, h, w) float32 in [-1, 1]
    valid: np.ndarray  # (h, w) bool: inside its polygons and not nodata


def ground_sample_distance(info: RasterInfo) -> float | None:
    """Metres on the ground per pixel at the raster's centre (the geometric mean of a column
    and a row step); None without georeferencing."""
    if not info.georeferenced:
        return None
    try:
        crs = ProjCRS.from_user_input(info.crs.to_wkt())
        geodetic = crs.geodetic_crs
    except ProjCRSError as exc:
        raise CrsError(f"the CRS of {Path(info.path).name} is unknown to PROJ") from exc
    if geodetic is None:
        raise CrsError(f"the CRS of {Path(info.path).name} has no datum to measure distances on")
    to_lonlat = Transformer.from_crs(crs, geodetic, always_xy=True)
    geod = geodetic.get_geod()
    col, row = info.width / 2, info.height / 2
    points = [info.transform * (col, row), info.transform * (col + 1, row),
              info.transform * (col, row + 1)]  # fmt: skip
    lons, lats = to_lonlat.transform(*zip(*points, strict=True))
    if not all(math.isfinite(v) for v in (*lons, *lats)):
        raise CrsError(f"the centre of {Path(info.path).name} has no geographic coordinates")
    _, _, across = geod.inv(lons[0], lats[0], lons[1], lats[1])
    _, _, down = geod.inv(lons[0], lats[0], lons[2], lats[2])
    if not (across > 0 and down > 0):
        raise CrsError(f"cannot measure the pixel size of {Path(info.path).name} on the ground")
    return math.sqrt(across * down)


def plan_example(
    path: str | os.PathLike,
    tile: RasterInfo,
    *,
    roi_geojson: str | os.PathLike | dict | None = None,
    rgb: tuple[int, int, int] | None = None,
) -> ExamplePlan:
    """Check the example at `path` against the tile's raster `tile`: readable, its polygons on
    it, bands that match the tile's (the same count, or RGB for an RGB tile; `rgb`: the tile's
    RGB positions), a size that can be used at the tile's resolution. Raises an InputError
    naming the problem."""
    name = Path(path).name
    try:
        info = inspect_raster(path)
    except RasterError as exc:
        raise RasterError(f"example image: {exc}") from exc
    roi = None
    window = Window(0, 0, info.width, info.height)
    if roi_geojson is not None:
        if not info.georeferenced:
            raise CrsError(
                f"example image {name} has no georeferencing, so example polygons cannot be "
                "placed on it: crop it to the example area instead"
            )
        try:
            roi = roi_from_geojson(roi_geojson, info)
        except InputError as exc:
            raise type(exc)(f"example polygons: {exc}") from exc
        window = roi.bbox
    if window.width * window.height > MAX_EXAMPLE_READ:
        raise ParameterError(
            f"example image {name}: the area used is {window.width}x{window.height} px, more "
            f"than {MAX_EXAMPLE_READ // 1_000_000} Mpx: crop it, or draw polygons on it"
        )
    bands, how = _match_bands(info, tile, rgb)
    scale, why = _scale(info, tile)
    size = (max(1, round(window.height * scale)), max(1, round(window.width * scale)))
    if min(size) < MIN_EXAMPLE_SIDE:
        raise ParameterError(
            f"example image {name}: the area used is only {size[1]}x{size[0]} px at the "
            f"tile's resolution ({why}); give a larger example area (at least "
            f"{MIN_EXAMPLE_SIDE} px a side)"
        )
    if size[0] * size[1] > MAX_EXAMPLE_PIXELS:
        shrink = math.sqrt(MAX_EXAMPLE_PIXELS / (size[0] * size[1]))
        raise ParameterError(
            f"example image {name}: the area used is {size[1]}x{size[0]} px at the tile's "
            f"resolution ({why}), more than {MAX_EXAMPLE_PIXELS // 1_000_000} Mpx; an "
            f"example about {shrink:.0%} of its size (or a part of it) shows the look as well"
        )
    note = f"example {name}: {how}; {why}, used as {size[1]}x{size[0]} px"
    return ExamplePlan(info, window, roi, bands, scale, size, note)


def _match_bands(info: RasterInfo, tile: RasterInfo, rgb) -> tuple[tuple[int, ...], str]:
    """For each of the tile's modelled bands, the example band that stands for it."""
    mine, theirs = list(tile.data_bands), list(info.data_bands)
    if len(theirs) == len(mine):
        return tuple(theirs), f"its {len(theirs)} band(s) in order"
    rgb = rgb or rgb_bands(tile.colorinterp, tile.data_bands)
    if len(mine) == 3 and len(set(rgb)) == 3 and len(theirs) >= 3:
        colours = rgb_bands(info.colorinterp, info.data_bands)
        bands = [0, 0, 0]
        for k in range(3):  # the tile's red position takes the example's red band, ...
            bands[rgb[k]] = theirs[colours[k]]
        return tuple(bands), "its red, green and blue bands"
    raise ParameterError(
        f"example image {Path(info.path).name} has {len(theirs)} data band(s) and the tile "
        f"{len(mine)}: give an example with the tile's bands (in its order), or an RGB "
        "example for an RGB tile"
    )


def _scale(info: RasterInfo, tile: RasterInfo) -> tuple[float, str]:
    """Example pixel size / tile pixel size, and a phrase saying how it was found."""
    theirs, mine = ground_sample_distance(info), ground_sample_distance(tile)
    if theirs is None or mine is None:
        which = "the example" if theirs is None else "the tile"
        return 1.0, f"{which} has no georeferencing, so its pixels are taken as the tile's size"
    return theirs / mine, f"{theirs:.3g} m/px resampled to the tile's {mine:.3g} m/px"


@dataclass(frozen=True)
class ExamplePixels:
    """The example as read from its file, once per edit: native values at the tile's ground
    sample distance, and its whole scene (at most 512 px a side) for radiometry matching."""

    plan: ExamplePlan
    data: np.ndarray  # (bands, h, w) native values
    valid: np.ndarray  # (h, w) bool: GDAL's mask and the example's polygons
    scene: np.ndarray  # (bands, sh, sw) native values of the whole raster
    scene_valid: np.ndarray  # (sh, sw) bool


def load_example(plan: ExamplePlan) -> ExamplePixels:
    """Read the planned example (resampled by GDAL: averaging when it shrinks) and its scene."""
    info = plan.info
    resampling = Resampling.average if plan.scale < 1 else Resampling.bilinear
    with gdal_env(), rasterio.open(info.path) as src:
        data = src.read(
            [b + 1 for b in plan.bands],
            window=plan.window,
            out_shape=(len(plan.bands), *plan.size),
            resampling=resampling,
        )
        # GDAL's own mask (nodata, alpha, internal masks) at the same size.
        valid = src.dataset_mask(window=plan.window, out_shape=plan.size) > 0
        scene, scene_valid = _whole_raster(src, plan.bands)
    if plan.roi is not None:
        h, w = plan.size
        onto = Affine(plan.window.width / w, 0, plan.window.col_off,
                      0, plan.window.height / h, plan.window.row_off)  # fmt: skip
        valid &= features.rasterize(
            [plan.roi.pixels], out_shape=plan.size, transform=onto, dtype="uint8"
        ).astype(bool)
    if not valid.any():
        raise ParameterError(f"example image {Path(info.path).name} has no valid pixels there")
    return ExamplePixels(plan, data, valid, scene, scene_valid)


def example_for_tile(
    pixels: ExamplePixels,
    scaling: BandScaling,
    tile: tuple[np.ndarray, np.ndarray] | None = None,
) -> Example:
    """The example in the model range of the tile whose `scaling` is given (when the dtypes
    differ, its own range is stretched to the model's).

    `tile`: the tile's scene (`read_scene`) in the tile's model range (C, h, w) and its valid
    pixels. When given, the example's radiometry is matched to it (`_match_radiometry`): a
    brighter sensor, another season or sun angle would otherwise show the whole ROI as a
    pasted piece of another picture."""
    if np.dtype(pixels.plan.info.dtype) == np.dtype(scaling.dtype):
        to_model = scaling
    else:
        to_model = BandScaling.fit(pixels.data, pixels.valid)
    model = to_model.forward(pixels.data, pixels.valid)
    if tile is not None:
        scene = to_model.forward(pixels.scene, pixels.scene_valid)
        model = _match_radiometry(model, scene, pixels.scene_valid, *tile)
    return Example(pixels.plan, np.clip(model, -1.0, 1.0), pixels.valid)


def read_example(
    plan: ExamplePlan,
    scaling: BandScaling,
    tile: tuple[np.ndarray, np.ndarray] | None = None,
) -> Example:
    """`load_example`, then `example_for_tile`: one window's example in one read."""
    return example_for_tile(load_example(plan), scaling, tile)


def _whole_raster(src, bands: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """A whole raster (open as `src`; `bands`, 0-based, at most 512 px a side, native values)
    and its valid pixels: the scene, whose statistics stand for its sensor and light."""
    shrink = min(1.0, 512 / max(src.width, src.height))
    size = (max(1, round(src.height * shrink)), max(1, round(src.width * shrink)))
    data = src.read([b + 1 for b in bands], out_shape=(len(bands), *size),
                    resampling=Resampling.average)  # fmt: skip
    return data, src.dataset_mask(out_shape=size) > 0


def read_scene(path: str | os.PathLike, bands: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The tile's scene: its whole raster as `_whole_raster` reads the example's. An example
    is matched scene to scene: matched to the window around the ROI, a patch of sea taken
    from the tile's own raster was shifted toward the window's land and came out brown."""
    with gdal_env(), rasterio.open(path) as src:
        return _whole_raster(src, bands)


def _match_radiometry(model, scene, scene_valid, tile, tile_valid) -> np.ndarray:
    """The example (model range) moved per band by the affine map that takes the mean and
    spread of its whole scene to the tile's scene's (the identity when both are one raster).
    What sets the example apart within its scene (water darker than the fields beside it) is
    kept; what sets its scene apart from the tile's (exposure, haze, sensor gain) is not."""
    if not scene_valid.any() or not tile_valid.any():
        return model
    out = np.empty_like(model)
    for k in range(len(model)):
        theirs, mine = scene[k][scene_valid], tile[k][tile_valid]
        gain = float(mine.std()) / max(float(theirs.std()), 1e-6)
        gain = min(max(gain, 0.5), 2.0)  # a scene of another kind is not stretched wildly
        out[k] = (model[k] - theirs.mean()) * gain + mine.mean()
    return out
