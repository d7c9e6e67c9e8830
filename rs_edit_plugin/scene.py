"""Full-scene outputs: the edited tile composited into the whole source raster.

An analyst compares whole scenes, not tiles. For a job with full-scene outputs on, the
results folder gets a pre/post/mask set on the source raster's own grid (CRS, geotransform,
size, data type and nodata of the source):

    <stem>_scene_pre.tif        the source raster (a GeoTIFF copy)
    <stem>[_vN]_scene_post.tif  the source with the returned tile written at its window
    <stem>_scene_mask.tif       the ROI (1) on the scene's grid; 0 elsewhere

Each file is written to a temporary name in the results folder, then renamed, so a file
with the final name is always complete. GDAL only; runs in the job's download task.
"""

import contextlib
import os
from pathlib import Path

import numpy as np
from osgeo import gdal

from .area import GTIFF_OPTIONS, AreaError, TileWindow, gdal_open, unrepresentable_nodata

MASK_DESCRIPTION = "rs-edit ROI mask (1 = edited)"


class SceneError(Exception):
    """The full-scene set cannot be written; the message says why."""


def scene_paths(stem: Path, outputs) -> tuple[Path, list[Path], Path]:
    """(pre, posts (one per returned tile), mask) for a job's result stem."""
    stem = Path(stem)
    pre = stem.with_name(f"{stem.name}_scene_pre.tif")
    posts = [Path(p).with_name(f"{Path(p).stem}_scene_post.tif") for p in outputs]
    return pre, posts, stem.with_name(f"{stem.name}_scene_mask.tif")


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.part")


def _rename(temporary: Path, path: Path) -> Path:
    """Give a closed, complete file its final name."""
    os.replace(temporary, path)
    return path


def _copy_source(src, path: Path):
    """A GeoTIFF copy of the whole source at a temporary name, open for update."""
    temporary = _temporary(path)
    options = gdal.TranslateOptions(
        format="GTiff",
        creationOptions=GTIFF_OPTIONS,
        # As for the tile (area._export_gdal): a nodata value the type cannot hold is dropped.
        noData="none" if unrepresentable_nodata(src) else None,
    )
    try:
        out = gdal.Translate(str(temporary), src, options=options)
    except RuntimeError:
        out = None
    if out is None:
        raise SceneError(f"cannot copy the source to {path}: {gdal.GetLastErrorMsg()}")
    return out, temporary


def _check_tile(tile, window: TileWindow, src, path) -> None:
    if tile is None:
        raise SceneError(f"cannot open the returned tile {path}")
    if (tile.RasterXSize, tile.RasterYSize) != (window.width, window.height):
        raise SceneError(
            f"the returned tile {path} is {tile.RasterXSize} x {tile.RasterYSize} px, the "
            f"area sent {window.width} x {window.height} px"
        )
    if tile.RasterCount != src.RasterCount:
        raise SceneError(
            f"the returned tile {path} has {tile.RasterCount} band(s), the source {src.RasterCount}"
        )
    got, want = tile.GetGeoTransform(), window.geotransform
    tolerance = 1e-6 * max(abs(want[1]), abs(want[5]))
    if any(abs(a - b) > tolerance for a, b in zip(got, want, strict=True)):
        raise SceneError(f"the returned tile {path} is not on the area's grid")


def write_scene_set(
    source_path: str, window: TileWindow, outputs, stem: Path, mask_path=None
) -> list[Path]:
    """Write pre, one post per returned tile, and the mask (see the module's doc); returns
    their paths. `mask_path`: the ROI mask sent with the job (None: the whole area)."""
    src = gdal_open(source_path)
    if src is None:
        raise SceneError(f"GDAL cannot open the source {source_path}")
    pre, posts, mask = scene_paths(stem, outputs)
    written = []
    current = out = tile = None
    try:
        out, current = _copy_source(src, pre)
        out.FlushCache()
        out = None  # closed: complete
        written.append(_rename(current, pre))
        for tile_path, post in zip(outputs, posts, strict=True):
            tile = gdal_open(str(tile_path))
            _check_tile(tile, window, src, tile_path)
            out, current = _copy_source(src, post)
            for i in range(1, src.RasterCount + 1):
                data = tile.GetRasterBand(i).ReadAsArray()
                out.GetRasterBand(i).WriteArray(data, window.xoff, window.yoff)
            tile = None
            out.FlushCache()
            out = None
            written.append(_rename(current, post))

        current = _temporary(mask)
        driver = gdal.GetDriverByName("GTiff")
        out = driver.Create(
            str(current), src.RasterXSize, src.RasterYSize, 1, gdal.GDT_Byte, GTIFF_OPTIONS
        )
        if out is None:
            raise SceneError(f"cannot write {mask}: {gdal.GetLastErrorMsg()}")
        out.SetGeoTransform(src.GetGeoTransform())
        out.SetProjection(src.GetProjection() or window.crs_wkt)
        band = out.GetRasterBand(1)
        band.SetDescription(MASK_DESCRIPTION)
        band.Fill(0)
        if mask_path is not None:
            roi = gdal_open(str(mask_path))
            if roi is None:
                raise SceneError(f"cannot open the ROI mask {mask_path}")
            values = (roi.GetRasterBand(1).ReadAsArray() != 0).astype("uint8")
            roi = None
        else:
            values = np.ones((window.height, window.width), "uint8")
        band.WriteArray(values, window.xoff, window.yoff)
        band = None
        out.FlushCache()
        out = None
        written.append(_rename(current, mask))
        current = None
    except (AreaError, OSError, RuntimeError) as exc:
        raise SceneError(str(exc)) from exc
    finally:
        out = tile = None  # closed before the temporary file goes
        if current is not None:
            with contextlib.suppress(OSError):
                Path(current).unlink()
    return written
