"""Checking a submission before it becomes a job: everything knowable now is refused now.

The same validation as `rs_edit.edit.prepare`, minus reading the pixels: options, the raster's
header and integrity (`inspect_raster`), the ROI (GeoJSON reprojected and clipped, or a mask on
the same grid), the band choice and the size of the window to edit. Before any of that, the
service's own rules: only GeoTIFF uploads (no VRT or other formats that could name other files),
the declared size within limits (read from the header, before any pixel), a GeoJSON ROI parsed
here from text (never a path) whose `crs` member may only name a CRS, and CLIP models by name
only. Messages name the form field ("image", "mask"), never a server path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import rasterio
from rasterio.errors import RasterioError
from shapely.geometry import shape
from shapely.validation import explain_validity

from ..bands import parse_band_list, rgb_bands
from ..edit import MAX_WINDOW_PIXELS, EditOptions, context_window
from ..errors import CrsError, InputError, ParameterError, RasterError, RoiError
from ..guidance.clip import REMOTECLIP_MODELS, TINY_RANDOM, check_remoteclip_obtainable
from ..memory import check_edit
from ..raster import gdal_env, inspect_raster
from ..roi import roi_from_geojson, roi_from_mask, whole_image
from .config import Limits
from .errors import LimitError, name_field

SERVICE_CLIP_MODELS = (TINY_RANDOM, *REMOTECLIP_MODELS)
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# A GeoJSON `crs` name: EPSG:4326, urn:ogc:def:crs:EPSG::32633, OGC:CRS84, ... (no paths).
_CRS_NAME = re.compile(
    r"(urn:ogc:def:crs:)?[A-Za-z][A-Za-z0-9_.-]{0,30}:{1,2}[A-Za-z0-9_.:-]{1,40}"
)
_MAX_GEOJSON_DEPTH = 32


def check_clip_weights(clip: str) -> None:
    """A RemoteCLIP whose weights are neither here nor downloadable: refused now (400), not a
    job that fails later. The message names the file; never the server's folder."""
    if clip not in REMOTECLIP_MODELS:
        return
    try:
        check_remoteclip_obtainable(clip)
    except ParameterError:
        raise ParameterError(
            f"CLIP weights {clip}.pt are not on this server and cannot be downloaded now: "
            "ask its operator to install them, or choose another CLIP model"
        ) from None


def build_options(
    *,
    prompt: str,
    preset: str,
    seed: int | None,
    clip: str,
    llm: str,
    variants: int,
    guidance: str,
    rgb_bands_text: str | None,
    feather: int,
    dilate: int,
    limits: Limits,
) -> EditOptions:
    """The job's options, validated (ParameterError on anything bad)."""
    if len(prompt) > limits.max_prompt_chars:
        raise ParameterError(
            f"prompt is too long ({len(prompt)} > {limits.max_prompt_chars} characters)"
        )
    clip = (clip or "").strip()
    if clip not in SERVICE_CLIP_MODELS:
        raise ParameterError(
            f"unknown CLIP model {clip[:80]!r}: the service accepts "
            + ", ".join(SERVICE_CLIP_MODELS)
        )
    if not 1 <= variants <= limits.max_variants:
        raise ParameterError(
            f"variants must be between 1 and {limits.max_variants}, got {variants}"
        )
    bands = None
    if rgb_bands_text is not None and rgb_bands_text.strip():
        bands = parse_band_list(rgb_bands_text[:100])
    return EditOptions(
        prompt=prompt,
        preset=preset,
        seed=seed,
        clip=clip,
        llm=llm,
        variants=variants,
        guidance=guidance,
        rgb_bands=bands,
        dilate_px=dilate,
        feather_px=feather,
    ).validate()


def check_geotiff_header(path: Path, field: str, limits: Limits) -> None:
    """The upload is a GeoTIFF whose declared size is within limits (no pixel is read)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic:
        raise RasterError(f"{field} is empty (0 bytes)")
    if magic not in _TIFF_MAGIC:
        raise RasterError(f"{field} is not a GeoTIFF (the file does not start with a TIFF header)")
    try:
        with gdal_env(), rasterio.open(path, driver="GTiff") as src:
            width, height, count = src.width, src.height, src.count
    except RasterioError as exc:
        message = name_field(str(exc), path, field)
        raise RasterError(
            f"{field} cannot be read as a GeoTIFF (truncated or corrupt?): {message}"
        ) from None
    if width > limits.max_width or height > limits.max_height:
        raise LimitError(
            f"{field} is {width}x{height} pixels; this server accepts at most "
            f"{limits.max_width}x{limits.max_height}"
        )
    if width * height > limits.max_pixels:
        raise LimitError(
            f"{field} has {width * height:,} pixels; this server accepts at most "
            f"{limits.max_pixels:,}"
        )
    if count > limits.max_bands:
        raise LimitError(
            f"{field} has {count} bands; this server accepts at most {limits.max_bands}"
        )


def parse_roi(text: str, limits: Limits, *, repair: bool) -> dict:
    """A GeoJSON ROI from form text: parsed here (text is never taken for a path), its `crs`
    member checked to be a CRS name, and its polygons valid unless `repair` is asked for."""
    if len(text.encode("utf-8", "replace")) > limits.max_roi_bytes:
        raise LimitError(f"roi is larger than {limits.max_roi_bytes:,} bytes")
    if not text.strip():
        raise RoiError("roi is empty: send GeoJSON polygons, or leave the field out")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RoiError(f"roi is not valid JSON: {exc}") from None
    except RecursionError:
        raise RoiError("roi is not usable GeoJSON: nested too deeply") from None
    if not isinstance(obj, dict) or "type" not in obj:
        raise RoiError("roi is not GeoJSON: expected an object with a 'type' member")
    polygons = list(_polygons(obj, 0))
    crs = obj.get("crs")
    if crs is not None:
        props = crs.get("properties") if isinstance(crs, dict) else None
        name = props.get("name") if isinstance(props, dict) else None
        if not isinstance(name, str) or not _CRS_NAME.fullmatch(name):
            raise CrsError(
                "roi's 'crs' member must name a CRS, e.g. "
                '{"type": "name", "properties": {"name": "EPSG:32633"}}'
            )
    if not repair:
        for geometry in polygons:
            try:
                geom = shape(geometry)
            except Exception:  # malformed coordinates: reported by the full check
                continue
            if not geom.is_empty and not geom.is_valid:
                raise RoiError(
                    f"roi polygon is invalid ({explain_validity(geom)}): fix it, or send "
                    "repair_roi=true to have it repaired"
                )
    return obj


def _polygons(obj, depth: int):
    """The Polygon/MultiPolygon geometry objects anywhere in a GeoJSON object."""
    if depth > _MAX_GEOJSON_DEPTH:
        raise RoiError("roi is not usable GeoJSON: nested too deeply")
    if not isinstance(obj, dict):
        return
    kind = obj.get("type")
    if kind in ("Polygon", "MultiPolygon"):
        yield obj
    elif kind == "FeatureCollection" and isinstance(obj.get("features"), list):
        for feature in obj["features"]:
            yield from _polygons(feature, depth + 1)
    elif kind == "Feature":
        yield from _polygons(obj.get("geometry"), depth + 1)
    elif kind == "GeometryCollection" and isinstance(obj.get("geometries"), list):
        for geometry in obj["geometries"]:
            yield from _polygons(geometry, depth + 1)


def validate_inputs(
    image: Path,
    options: EditOptions,
    *,
    roi: dict | None,
    mask: Path | None,
    limits: Limits,
    memory_budget_mb: int | None = None,
    device_type: str = "cpu",
) -> dict:
    """Everything `prepare` checks, without reading the pixels. Returns a summary for the job.

    With `memory_budget_mb`, an edit whose estimated peak memory (`memory.estimate_edit`: the
    windows `prepare_windows` will read, the bands, the preset) exceeds it is refused too
    (`MemoryBudgetError`, 413): a small upload can declare a large raster (a 4600x4600 all-zero
    DEFLATE GeoTIFF is 72 KB)."""
    try:
        check_geotiff_header(image, "image", limits)
        info = inspect_raster(image)
        if roi is not None and mask is not None:
            raise ParameterError("send either roi (GeoJSON) or mask (a raster), not both")
        if roi is not None:
            region = roi_from_geojson(roi, info)
        elif mask is not None:
            check_geotiff_header(mask, "mask", limits)
            region = roi_from_mask(mask, info)
        else:
            region = whole_image(info)
        rgb_bands(info.colorinterp, info.data_bands, options.rgb_bands)
        window = context_window(region.bbox, info, options.context_px + options.dilate_px)
        if window.width * window.height > MAX_WINDOW_PIXELS:
            raise LimitError(
                f"the area to edit ({window.width}x{window.height} px with context) is larger "
                f"than {MAX_WINDOW_PIXELS:,} px: send a smaller ROI"
            )
    except RecursionError:
        raise RoiError("roi is not usable GeoJSON: nested too deeply") from None
    except InputError as exc:
        message = name_field(str(exc), image, "image")
        if mask is not None:
            message = name_field(message, mask, "mask")
        raise type(exc)(message) from None
    estimate = None
    if memory_budget_mb is not None:
        estimate = check_edit(
            info,
            region,
            options,
            memory_budget_mb,
            device_type=device_type,
            hint="; this server's memory budget is set by its operator (--memory-budget)",
        )
    return {
        "width": info.width,
        "height": info.height,
        "bands": info.count,
        "dtype": info.dtype,
        "crs": info.crs.to_string() if info.crs else None,
        "roi": "geojson" if roi is not None else "mask" if mask is not None else "whole image",
        "roi_window": [int(region.bbox.col_off), int(region.bbox.row_off)]
        + [int(region.bbox.width), int(region.bbox.height)],
        "roi_clipped": bool(getattr(region, "clipped", False)),
        "memory_estimate_mb": estimate,
    }
