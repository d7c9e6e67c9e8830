"""How good is an edit? `rs-edit eval` and `rs-edit edit --report`.

`evaluate_edit` compares an edited raster (AFTER) with its input (BEFORE) inside the same ROI the
editor used (GeoJSON in any CRS, a mask raster, or the whole image) and reports:

- the CLIP score of the ROI against the prompt, for the edit and for the input (the paper's
  "CLIP score": 100 * max(cosine, 0)), with the loaded CLIP and the same prompt ensemble as the
  editor (mean of the unit text embeddings);
- the patch SWD ratio of the edited window against the input window (see `evaluate_edit`);
- the fraction of pixels changed inside the ROI and outside it, the latter over the WHOLE raster,
  streamed in chunks of bounded size;
- optionally a before/after PNG quicklook of the window with the ROI outlined (`quicklook_png`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw
from rasterio.windows import Window
from shapely import affinity
from shapely.geometry.base import BaseGeometry

from .composite import roi_alpha
from .edit import EditOptions, prepare
from .errors import InputError, RasterError
from .guidance.clip import DEFAULT_CLIP
from .raster import RasterInfo, gdal_env, inspect_raster, nodata_pixels, read_tile

# Bytes of pixels read per raster and chunk when scanning the whole raster for changes.
CHUNK_BYTES = 16 * 1024 * 1024
QUICKLOOK_MIN_HEIGHT = 256  # px: smaller windows are enlarged (integer factor, nearest)
QUICKLOOK_MAX_SIDE = 2048  # px: larger windows are reduced
QUICKLOOK_GAP = 8  # px of white between the panels
ROI_OUTLINE = (255, 230, 0)  # yellow

Log = Callable[[str], None]


def evaluate_edit(
    before: str | os.PathLike,
    after: str | os.PathLike,
    prompt: str,
    *,
    roi_geojson: str | os.PathLike | dict | None = None,
    mask_path: str | os.PathLike | None = None,
    clip: str = DEFAULT_CLIP,
    llm: str = "none",
    rgb_bands: Sequence[int] | None = None,
    device: str = "cpu",
    png: str | os.PathLike | None = None,
    context_px: int = 64,
    dilate_px: int = 0,
    prompts: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    log: Log | None = None,
) -> dict:
    """Score the edit BEFORE -> AFTER of the ROI by `prompt`; a JSON-serialisable dict.

    The ROI, the window (ROI bounding box + `context_px`, as the editor reads it) and the band
    scaling are exactly those of `rs_edit.edit.prepare` on BEFORE. AFTER must be on the same
    grid (size, band count, CRS, geotransform), else `InputError`. `dilate_px` grows the ROI as
    `--dilate` does (the editor may change those pixels too). `prompts` replaces the prompt
    ensemble (e.g. the one an edit used); otherwise the prompt is expanded as the editor does
    (`llm`, with the prompt cache under `cache_dir`).

    Keys:

    - `clip`, `clip_random` (random weights: the scores mean nothing), `prompts`;
    - `clip_similarity_input` / `clip_similarity_edit`: cosine between CLIP's embedding of the
      ROI's bounding-box crop (RGB bands mapped to [0, 1] by the BandScaling fitted on BEFORE's
      window, for both rasters, so the two are comparable) and the ensemble's text target. The
      editor's own report scores its raw model output at the model's finest scale, so its
      numbers can differ slightly from these (composited, written) ones;
    - `clip_score_input` / `clip_score_edit`: 100 * max(cosine, 0), the CLIP score in %;
    - `swd_ratio`: multi-scale patch sliced-Wasserstein distance between the edited window and
      the input window, divided by the distance between the input window's own halves
      (`rs_edit.engine.quality.swd_ratio`, on model-range images). It measures patch realism
      relative to the tile's own variation: 0 = no change, up to about 1 = the edit's local
      textures and colours are as close to the tile's as two parts of the tile are to each other,
      well above 1 = patches unlike anything in the tile (a strong edit, or artefacts). The
      unchanged context dilutes it: compare edits of the same ROI, not across ROIs. `null` for
      windows under 14 px on a side;
    - `changed_inside`: fraction of ROI pixels where any band differs (both nodata, or both NaN,
      counts as equal); `changed_outside`: the same over every pixel of the raster outside the
      ROI, with the pixel counts `changed_inside_pixels`, `changed_outside_pixels`,
      `outside_pixels`, and `roi_pixels`;
    - `georef_identical`: CRS, geotransform, data types and nodata all equal;
    - `window`, `roi_bbox` ([col_off, row_off, width, height] on the raster), `png` (or null).
    """
    from .engine.device import pick_device
    from .guidance.clip import load_clip
    from .guidance.prompts import expand_prompt

    options = EditOptions(
        prompt=prompt,
        clip=clip,
        llm=llm,
        rgb_bands=tuple(rgb_bands) if rgb_bands is not None else None,
        context_px=context_px,
        dilate_px=dilate_px,
    ).validate()
    tile = prepare(before, options, roi_geojson=roi_geojson, mask_path=mask_path)
    after_info = inspect_raster(after)
    check_same_grid(tile.info, after_info)
    after_tile = read_tile(after_info, tile.window)
    bands = list(tile.info.data_bands)
    inside = roi_alpha(tile.roi_mask, dilate_px=options.dilate_px) > 0

    torch_device = pick_device(device)
    model = load_clip(options.clip, torch_device, log=log)
    if prompts:
        ensemble = [str(p) for p in prompts]
    else:
        ensemble = list(
            expand_prompt(
                options.prompt,
                llm=options.llm,
                cache_dir=Path(cache_dir) / "prompts" if cache_dir else None,
                log=log,
            ).prompts
        )
    target = model.text_target(ensemble)
    after_model = tile.scaling.forward(after_tile.data[bands], after_tile.valid)
    box = _bbox(inside)
    sim_input = _clip_similarity(model, target, tile.model_image, tile.rgb, box)
    sim_edit = _clip_similarity(model, target, after_model, tile.rgb, box)

    changed_in = int(_changed(tile.data, after_tile.data, tile.info, after_info)[inside].sum())
    roi_pixels = int(inside.sum())
    changed_out = changed_outside(tile.info, after_info, tile.window, inside)
    outside_pixels = tile.info.width * tile.info.height - roi_pixels

    png_path = None
    if png is not None:
        polygons = None
        if tile.roi.pixels is not None and not options.dilate_px:
            w = tile.window
            polygons = affinity.translate(tile.roi.pixels, -w.col_off, -w.row_off)
        rgb = [bands[p] for p in tile.rgb]
        png_path = quicklook_png(
            tile.data[rgb],
            after_tile.data[rgb],
            inside,
            png,
            polygons=polygons,
            valid=tile.valid,
        )
    return {
        "before": str(before),
        "after": str(after),
        "prompt": options.prompt,
        "prompts": ensemble,
        "clip": model.name,
        "clip_random": bool(model.is_random),
        "device": str(torch_device),
        "clip_similarity_input": round(sim_input, 4),
        "clip_similarity_edit": round(sim_edit, 4),
        "clip_score_input": round(100 * max(sim_input, 0.0), 2),
        "clip_score_edit": round(100 * max(sim_edit, 0.0), 2),
        "swd_ratio": _swd_ratio(after_model, tile.model_image),
        "changed_inside": changed_in / roi_pixels if roi_pixels else 0.0,
        "changed_outside": changed_out / outside_pixels if outside_pixels else 0.0,
        "changed_inside_pixels": changed_in,
        "changed_outside_pixels": changed_out,
        "roi_pixels": roi_pixels,
        "outside_pixels": outside_pixels,
        "georef_identical": georef_identical(tile.info, after_info),
        "window": _window_list(tile.window),
        "roi_bbox": _window_list(tile.roi.bbox),
        "png": str(png_path) if png_path is not None else None,
    }


# --- grids and changed pixels ----------------------------------------------------------------


def check_same_grid(before: RasterInfo, after: RasterInfo) -> None:
    """AFTER must be BEFORE's grid: size, band count, and CRS and geotransform."""
    name = Path(after.path).name
    if (after.width, after.height, after.count) != (before.width, before.height, before.count):
        raise InputError(
            f"edited raster {name} is {after.width}x{after.height} px with {after.count} bands "
            f"but the input is {before.width}x{before.height} px with {before.count}: "
            "not an edit of this input"
        )
    if after.georeferenced != before.georeferenced or after.crs != before.crs:
        raise InputError(
            f"edited raster {name} has CRS {_crs_text(after)} but the input has "
            f"{_crs_text(before)}: not on the input's grid"
        )
    if not before.same_transform(after):
        raise InputError(
            f"edited raster {name} has geotransform {tuple(after.transform)[:6]} but the input "
            f"has {tuple(before.transform)[:6]}: not on the input's grid"
        )


def _crs_text(info: RasterInfo) -> str:
    return info.crs.to_string() if info.crs is not None else "none"


def georef_identical(before: RasterInfo, after: RasterInfo) -> bool:
    """CRS, geotransform, data type and nodata exactly equal (NaN nodata equals NaN)."""
    same_nodata = before.nodata == after.nodata or (
        before.nodata is not None
        and after.nodata is not None
        and math.isnan(before.nodata)
        and math.isnan(after.nodata)
    )
    return bool(
        before.crs == after.crs
        and before.transform == after.transform
        and before.dtype == after.dtype
        and same_nodata
    )


def _changed(a: np.ndarray, b: np.ndarray, info_a: RasterInfo, info_b: RasterInfo) -> np.ndarray:
    """(h, w) bool: any band differs. Both nodata (each file's own value) or both NaN is equal."""
    same = a == b
    same |= nodata_pixels(a, info_a.nodata) & nodata_pixels(b, info_b.nodata)
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        same |= np.isnan(a) & np.isnan(b)
    return ~same.all(axis=0)


def _chunk_windows(width: int, height: int, pixel_bytes: int, block_height: int) -> Iterator:
    """Windows covering the raster, each at most CHUNK_BYTES of pixels: full-width strips
    (whole blocks high when they fit), or pieces of single rows for very wide rasters."""
    max_px = max(1, CHUNK_BYTES // max(1, pixel_bytes))
    rows = max_px // width
    if rows >= 1:
        if rows >= block_height:
            rows -= rows % block_height
        for r0 in range(0, height, rows):
            yield Window(0, r0, width, min(rows, height - r0))
    else:
        for r0 in range(height):
            for c0 in range(0, width, max_px):
                yield Window(c0, r0, min(max_px, width - c0), 1)


def changed_outside(
    before: RasterInfo, after: RasterInfo, window: Window, inside: np.ndarray
) -> int:
    """Pixels of the whole raster outside the ROI where any band differs.

    `inside` is the ROI on `window` (the ROI lies within it). The rasters are read in chunks of
    at most CHUNK_BYTES each, so memory does not grow with the raster.
    """
    w0, h0 = int(window.col_off), int(window.row_off)
    w1, h1 = w0 + int(window.width), h0 + int(window.height)
    itemsize = max(np.dtype(before.dtype).itemsize, np.dtype(after.dtype).itemsize)
    pixel_bytes = before.count * itemsize
    count = 0
    try:
        with gdal_env(), rasterio.open(before.path) as src_a, rasterio.open(after.path) as src_b:
            block_height = src_a.block_shapes[0][0]
            for chunk in _chunk_windows(before.width, before.height, pixel_bytes, block_height):
                changed = _changed(
                    src_a.read(window=chunk), src_b.read(window=chunk), before, after
                )
                c0, r0 = int(chunk.col_off), int(chunk.row_off)
                c1, r1 = c0 + int(chunk.width), r0 + int(chunk.height)
                # Leave out the ROI where this chunk overlaps the window.
                oc0, or0, oc1, or1 = max(c0, w0), max(r0, h0), min(c1, w1), min(r1, h1)
                if oc0 < oc1 and or0 < or1:
                    changed[or0 - r0 : or1 - r0, oc0 - c0 : oc1 - c0] &= ~inside[
                        or0 - h0 : or1 - h0, oc0 - w0 : oc1 - w0
                    ]
                count += int(changed.sum())
    except rasterio.errors.RasterioError as exc:
        raise RasterError(f"cannot read pixels of {before.path} or {after.path}: {exc}") from exc
    return count


# --- CLIP and SWD ----------------------------------------------------------------------------


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(row0, col0, row1, col1) of the True pixels; the whole mask if there are none."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return (0, 0, mask.shape[0], mask.shape[1])
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def _clip_similarity(model, target, image: np.ndarray, rgb, box) -> float:
    """Cosine between the ROI box of a model-range image (C, h, w) and the text target."""
    import torch

    r0, c0, r1, c1 = box
    crop = image[list(rgb), r0:r1, c0:c1]
    rgb01 = np.clip((crop.astype(np.float32) + 1.0) / 2.0, 0.0, 1.0)
    with torch.no_grad():
        return float(model.similarity(torch.from_numpy(rgb01)[None], target)[0])


def _swd_ratio(edited: np.ndarray, source: np.ndarray) -> float | None:
    import torch

    from .engine.quality import swd_ratio

    if min(source.shape[-2:]) < 14:  # the halves of the source must hold a 7x7 patch
        return None
    ratio = swd_ratio(torch.from_numpy(edited), torch.from_numpy(source))
    return round(ratio, 4)


def _window_list(window: Window) -> list[int]:
    return [int(window.col_off), int(window.row_off), int(window.width), int(window.height)]


# --- the quicklook ---------------------------------------------------------------------------


def quicklook_png(
    before: np.ndarray,
    after: np.ndarray,
    roi_mask: np.ndarray,
    png: str | os.PathLike,
    *,
    polygons: BaseGeometry | None = None,
    valid: np.ndarray | None = None,
    min_height: int = QUICKLOOK_MIN_HEIGHT,
    max_side: int = QUICKLOOK_MAX_SIDE,
) -> Path:
    """Side-by-side RGB quicklook of a window, before | after, the ROI outlined in yellow.

    `before`, `after`: (3, h, w) (or (1, h, w)) native values of the bands shown as RGB.
    uint8 is shown as is; other types get a 2-98 % percentile stretch per band, fitted on
    BEFORE's valid pixels and applied to both panels. The ROI is outlined along `polygons`
    (window pixel coordinates, col/row) when given, else along the edge of `roi_mask`.
    Windows lower than `min_height` are enlarged by the smallest integer factor that reaches
    it (nearest neighbour); windows longer than `max_side` are reduced.
    """
    png = Path(png)
    if not png.parent.is_dir():
        raise InputError(f"quicklook folder does not exist: {png.parent}")
    h, w = roi_mask.shape
    scale = float(math.ceil(min_height / h)) if h < min_height else 1.0
    if max(h, w) * scale > max_side:
        scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    lo, hi = _stretch_limits(before, valid)
    edge = None if polygons is not None else _mask_edge(roi_mask, size)
    panels = []
    for data in (before, after):
        rgb = _to_uint8(data, lo, hi)
        if valid is not None:
            rgb[~valid] = 0
        resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX
        img = Image.fromarray(rgb, "RGB").resize(size, resample)
        if edge is not None:
            pixels = np.asarray(img).copy()
            pixels[edge] = ROI_OUTLINE
            img = Image.fromarray(pixels, "RGB")
        else:
            draw = ImageDraw.Draw(img)
            for poly in getattr(polygons, "geoms", [polygons]):
                for ring in (poly.exterior, *poly.interiors):
                    xy = [(x * scale, y * scale) for x, y in ring.coords]
                    draw.line(xy, fill=ROI_OUTLINE, width=2)
        panels.append(img)
    sheet = Image.new("RGB", (size[0] * 2 + QUICKLOOK_GAP, size[1]), (255, 255, 255))
    sheet.paste(panels[0], (0, 0))
    sheet.paste(panels[1], (size[0] + QUICKLOOK_GAP, 0))
    try:
        sheet.save(png, format="PNG")
    except OSError as exc:
        raise InputError(f"cannot write the quicklook {png}: {exc}") from exc
    return png


def _stretch_limits(data: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-band (lo, hi) display limits: 0..255 for uint8, else the 2nd and 98th percentiles."""
    bands = data.shape[0]
    if data.dtype == np.uint8:
        return np.zeros(bands), np.full(bands, 255.0)
    lo, hi = np.zeros(bands), np.ones(bands)
    for i, band in enumerate(data):
        values = band[valid] if valid is not None else band.ravel()
        values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        if values.size:
            low, high = np.percentile(values.astype(np.float64), [2, 98])
            if not high > low:
                low, high = float(values.min()), float(values.max())
            lo[i], hi[i] = low, high if high > low else low + 1.0
    return lo, hi


def _to_uint8(data: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(1 or 3, h, w) native values -> (h, w, 3) uint8 display values."""
    if data.shape[0] == 1:
        data, lo, hi = np.repeat(data, 3, axis=0), np.repeat(lo, 3), np.repeat(hi, 3)
    if data.dtype == np.uint8:
        return np.ascontiguousarray(np.moveaxis(data, 0, -1))
    scaled = (data.astype(np.float64) - lo[:, None, None]) / (hi - lo)[:, None, None]
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=1.0, neginf=0.0)
    out = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(out, 0, -1))


def _mask_edge(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool at the quicklook size: a 2 px line just inside the ROI's edge."""
    from scipy import ndimage

    img = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
    big = np.asarray(img) > 0
    padded = np.pad(big, 2, mode="edge")  # the window's border is not an edge of the ROI
    eroded = ndimage.binary_erosion(padded, iterations=2)[2:-2, 2:-2]
    return big & ~eroded
