"""`rs-edit augment`: edited imagery as labelled training data.

For every polygon of a vector layer (GeoJSON, or a GeoPackage read with the standard library's
sqlite3) a chip of `chip` x `chip` pixels centred on the polygon is cut from the raster (shifted,
not shrunk, to stay inside it; smaller only when the raster is), and the polygon is edited by each
prompt, `variants` times. The output folder holds:

- `pre/<polygon>.tif`: the chip, native values, same CRS and pixel grid as the raster;
- `mask/<polygon>.tif`: uint8 0/1 on the chip's grid: ONLY this polygon (the region that was
  edited, so the only place that can have changed; other polygons in the chip are unchanged);
- `post/<polygon>_<prompt slug>_v<k>.tif`: the edited chip (`backend.edit.run_edit`, the mask as
  ROI, seed `seed + k - 1`); the tile model is trained once per chip and kept in
  `OUTDIR/.cache`, so every prompt and variant of a chip reuses it;
- `levircd/{A,B,label}/<sample>.png`: the LEVIR-CD layout: pre and post as 8-bit RGB (the edit's
  RGB bands; uint8 data as is, other data stretched by the pre chip's 2-98 % percentiles, the
  same limits for pre and post) and the label as 0/255;
- `manifest.jsonl`: one JSON object per sample (`MANIFEST_KEYS`), appended only after the
  sample's files exist. A rerun skips every sample whose manifest line and files exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import shapely
from PIL import Image
from pyproj import CRS as ProjCRS
from pyproj.exceptions import CRSError as ProjCRSError
from rasterio.windows import Window
from shapely import affinity
from shapely.geometry.base import BaseGeometry

from .bands import rgb_bands as pick_rgb_bands
from .engine.presets import DEFAULT_PRESET
from .errors import CrsError, ParameterError, RoiError
from .guidance.clip import DEFAULT_CLIP
from .raster import gdal_env, inspect_raster, nodata_pixels
from .roi import (
    Roi,
    _clip_to_raster,
    _geojson_crs,
    _geometries,
    _load_json,
    _polygonal,
    _reproject,
    _shapely_affine,
)

MANIFEST = "manifest.jsonl"
MANIFEST_KEYS = (
    "sample",
    "polygon_id",
    "prompt",
    "prompts",
    "variant",
    "seed",
    "preset",
    "clip",
    "clip_random",
    "clip_similarity",
    "clip_score",
    "swd_ratio",
    "pre",
    "post",
    "mask",
    "levircd_a",
    "levircd_b",
    "levircd_label",
    "bounds",
    "crs",
    "width",
    "height",
)
_FILE_KEYS = ("pre", "post", "mask", "levircd_a", "levircd_b", "levircd_label")
MAX_CHIP = 4096

SampleHook = Callable[[int, int], None]  # (samples done, total); raise CancelledError to stop


@dataclass(frozen=True)
class AugmentOptions:
    prompts: Sequence[str] = ()
    prompt_field: str | None = None
    prompt_map: dict[str, str] = field(default_factory=dict)
    variants: int = 1
    chip: int = 128
    preset: str = DEFAULT_PRESET
    clip: str = DEFAULT_CLIP
    seed: int = 0
    layer: str | None = None
    rgb_bands: tuple[int, ...] | None = None
    device: str = "auto"


@dataclass
class Feature:
    id: str
    geometry: BaseGeometry  # polygonal, in the layer's CRS
    properties: dict


@dataclass
class Chip:
    feature: Feature
    prompts: list[str]
    roi: Roi  # the polygon on the full raster grid
    window: Window


# --------------------------------------------------------------------------------- polygons


def read_polygons(path: str | os.PathLike, layer: str | None = None):
    """(features, CRS) of a GeoJSON file or a GeoPackage layer; only polygonal features."""
    path = Path(path)
    if not path.is_file():
        raise RoiError(f"polygon file not found: {path}")
    if path.suffix.lower() == ".gpkg":
        feats, crs = _read_gpkg(path, layer)
    else:
        if layer is not None:
            raise ParameterError("--layer applies to GeoPackages only")
        feats, crs = _read_geojson(path)
    if not feats:
        raise RoiError(f"no polygons in {path.name}")
    ids = [f.id for f in feats]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise RoiError(f"polygon ids are not unique in {path.name}: {', '.join(dupes[:5])}")
    return feats, crs


def _read_geojson(path: Path) -> tuple[list[Feature], ProjCRS]:
    obj = _load_json(path)
    if not isinstance(obj, dict) or "type" not in obj:
        raise RoiError(f"{path.name} is not GeoJSON: expected an object with a 'type' member")
    crs = _geojson_crs(obj)
    items = obj.get("features") if obj.get("type") == "FeatureCollection" else [obj]
    if not isinstance(items, list):
        raise RoiError("GeoJSON FeatureCollection has no 'features' list")
    feats = []
    for i, item in enumerate(items, start=1):
        props = (item.get("properties") or {}) if isinstance(item, dict) else {}
        geoms = [g for g in _geometries(item, []) if g.geom_type in ("Polygon", "MultiPolygon")]
        if not geoms:
            continue
        geometry = _polygonal(shapely.make_valid(shapely.union_all(geoms)))
        if geometry.is_empty:
            continue
        fid = item.get("id") if isinstance(item, dict) else None
        if fid is None:
            fid = props.get("id", props.get("fid", i))
        feats.append(Feature(_safe_id(fid), geometry, dict(props)))
    return feats, crs


def _read_gpkg(path: Path, layer: str | None) -> tuple[list[Feature], ProjCRS]:
    """A GeoPackage feature table, read with sqlite3 (no GDAL Python bindings needed)."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise RoiError(f"cannot open GeoPackage {path.name}: {exc}") from exc
    try:
        tables = con.execute(
            "SELECT c.table_name, g.column_name, g.srs_id FROM gpkg_contents c "
            "JOIN gpkg_geometry_columns g ON g.table_name = c.table_name "
            "WHERE c.data_type = 'features' ORDER BY c.table_name"
        ).fetchall()
        if not tables:
            raise RoiError(f"GeoPackage {path.name} has no feature layers")
        if layer is None:
            if len(tables) > 1:
                names = ", ".join(t[0] for t in tables)
                raise RoiError(f"GeoPackage {path.name} has several layers ({names}): --layer")
            table, column, srs_id = tables[0]
        else:
            match = [t for t in tables if t[0] == layer]
            if not match:
                names = ", ".join(t[0] for t in tables)
                raise RoiError(f"no layer {layer!r} in {path.name} (layers: {names})")
            table, column, srs_id = match[0]
        crs = _gpkg_crs(con, srs_id)
        info = con.execute(f'PRAGMA table_info("{table}")').fetchall()
        names = [row[1] for row in info]
        pk = next((row[1] for row in info if row[5]), None)
        feats = []
        for n, row in enumerate(con.execute(f'SELECT * FROM "{table}"'), start=1):
            record = dict(zip(names, row, strict=True))
            geometry = _gpkg_geometry(record.pop(column))
            if geometry is None or geometry.geom_type not in ("Polygon", "MultiPolygon"):
                continue
            geometry = _polygonal(shapely.make_valid(geometry))
            if geometry.is_empty:
                continue
            fid = record.get(pk, n) if pk else n
            feats.append(Feature(_safe_id(fid), geometry, record))
        return feats, crs
    except sqlite3.Error as exc:
        raise RoiError(f"cannot read GeoPackage {path.name}: {exc}") from exc
    finally:
        con.close()


def _gpkg_crs(con: sqlite3.Connection, srs_id: int) -> ProjCRS:
    row = con.execute(
        "SELECT organization, organization_coordsys_id, definition FROM gpkg_spatial_ref_sys "
        "WHERE srs_id = ?",
        (srs_id,),
    ).fetchone()
    if row is None or srs_id in (0, -1):
        raise CrsError(f"GeoPackage layer has no usable CRS (srs_id {srs_id})")
    org, code, definition = row
    try:
        if org and org.upper() == "EPSG" and code and code > 0:
            return ProjCRS.from_epsg(code)
        return ProjCRS.from_user_input(definition)
    except ProjCRSError as exc:
        raise CrsError(f"unknown CRS in GeoPackage (srs_id {srs_id})") from exc


def _gpkg_geometry(blob) -> BaseGeometry | None:
    """GeoPackage binary: 'GP', version, flags, srs_id, optional envelope, then WKB."""
    if blob is None:
        return None
    blob = bytes(blob)
    if blob[:2] != b"GP" or len(blob) < 8:
        raise RoiError("GeoPackage geometry is not in the GeoPackage binary format")
    flags = blob[3]
    if flags & 0b10000:  # empty geometry
        return None
    envelope = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}.get((flags >> 1) & 0b111)
    if envelope is None:
        raise RoiError("GeoPackage geometry has an invalid envelope flag")
    try:
        return shapely.from_wkb(blob[8 + envelope :])
    except shapely.errors.ShapelyError as exc:
        raise RoiError(f"GeoPackage geometry is not valid WKB: {exc}") from exc


def gpkg_blob(geometry: BaseGeometry, srs_id: int) -> bytes:
    """The GeoPackage binary of `geometry` (no envelope, little-endian): for writing test data."""
    return b"GP" + bytes([0, 1]) + struct.pack("<i", srs_id) + shapely.to_wkb(geometry)


def _safe_id(value) -> str:
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", str(value)).strip("-.")
    return text[:64] or "polygon"


def prompt_slugs(prompts: Sequence[str]) -> dict[str, str]:
    """A file-name part per prompt, stable across runs; a hash where it would be ambiguous."""
    full = {p: re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in prompts}
    short = {p: s[:40].strip("-") for p, s in full.items()}
    slugs = {}
    for p, s in short.items():
        if not s or s != full[p] or list(short.values()).count(s) > 1:
            s = f"{s}-{hashlib.sha1(p.encode()).hexdigest()[:6]}".strip("-")
        slugs[p] = s
    return slugs


def _feature_prompts(feature: Feature, options: AugmentOptions) -> list[str]:
    if not options.prompt_field:
        return list(options.prompts)
    value = feature.properties.get(options.prompt_field)
    if value is None:
        return []
    value = str(value)
    if options.prompt_map:
        return [options.prompt_map[value]] if value in options.prompt_map else []
    return [value]


def parse_prompt_map(items: Sequence[str]) -> dict[str, str]:
    """'value=prompt' pairs -> {value: prompt}."""
    mapping = {}
    for item in items:
        value, sep, prompt = item.partition("=")
        if not sep or not value.strip() or not prompt.strip():
            raise ParameterError(f"--prompt-map expects VALUE=PROMPT, got {item!r}")
        mapping[value.strip()] = " ".join(prompt.split())
    return mapping


# ------------------------------------------------------------------------------------- chips


def chip_window(roi: Roi, width: int, height: int, chip: int) -> Window:
    """A chip x chip window centred on the polygon, shifted to lie inside the raster."""
    minx, miny, maxx, maxy = roi.pixels.bounds
    w, h = min(chip, width), min(chip, height)
    c0 = int(round((minx + maxx) / 2 - w / 2))
    r0 = int(round((miny + maxy) / 2 - h / 2))
    c0 = min(max(c0, 0), width - w)
    r0 = min(max(r0, 0), height - h)
    return Window(c0, r0, w, h)


def plan_chips(raster, polygons, options: AugmentOptions, log=lambda line: None) -> list[Chip]:
    """Validate everything (raises InputError before any work) and place every chip."""
    if options.prompt_field and options.prompts:
        raise ParameterError("give --prompt or --prompt-field, not both")
    if not options.prompt_field and not options.prompts:
        raise ParameterError("give at least one --prompt, or --prompt-field")
    if options.prompt_map and not options.prompt_field:
        raise ParameterError("--prompt-map needs --prompt-field")
    if not 1 <= options.variants <= 16:
        raise ParameterError(f"variants must be between 1 and 16, got {options.variants}")
    if not 16 <= options.chip <= MAX_CHIP:
        raise ParameterError(f"chip must be between 16 and {MAX_CHIP} px, got {options.chip}")
    if not 0 <= options.seed < 2**62:
        raise ParameterError(f"seed must be between 0 and 2**62-1, got {options.seed}")
    info = inspect_raster(raster)
    if not info.georeferenced:
        raise CrsError(
            f"raster {Path(raster).name} has no georeferencing: polygons cannot be placed"
        )
    feats, crs = read_polygons(polygons, options.layer)
    try:
        raster_crs = ProjCRS.from_user_input(info.crs.to_wkt())
    except ProjCRSError as exc:
        raise CrsError("the raster's CRS is unknown to PROJ") from exc
    chips = []
    for feat in feats:
        prompts = _feature_prompts(feat, options)
        if not prompts:
            log(f"polygon {feat.id}: no prompt for it (field {options.prompt_field!r}), skipped")
            continue
        projected = _reproject(feat.geometry, crs, raster_crs)
        pixels = affinity.affine_transform(projected, _shapely_affine(~info.transform))
        try:
            roi = _clip_to_raster(pixels, info)
        except RoiError as exc:
            raise RoiError(f"polygon {feat.id}: {exc}") from None
        chips.append(
            Chip(feat, prompts, roi, chip_window(roi, info.width, info.height, options.chip))
        )
    if not chips:
        raise RoiError("no polygon has a prompt: check --prompt-field / --prompt-map")
    return chips


# ----------------------------------------------------------------------------------- writing


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent
    )
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_chip(raster, window: Window, path: Path) -> None:
    """The window of the raster as a GeoTIFF on the same grid (all bands, native values)."""

    def write(tmp: Path) -> None:
        with gdal_env(), rasterio.open(raster) as src:
            data = src.read(window=window)
            profile = {
                "driver": "GTiff",
                "width": int(window.width),
                "height": int(window.height),
                "count": src.count,
                "dtype": src.dtypes[0],
                "crs": src.crs,
                "transform": src.window_transform(window),
                "nodata": src.nodata,
                "compress": "deflate",
            }
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(data)
                dst.colorinterp = src.colorinterp
                for i, desc in enumerate(src.descriptions, start=1):
                    if desc:
                        dst.set_band_description(i, desc)

    _atomic(path, write)


def write_mask(roi: Roi, window: Window, like: Path, path: Path) -> np.ndarray:
    mask = roi.rasterize(window).astype(np.uint8)

    def write(tmp: Path) -> None:
        with gdal_env(), rasterio.open(like) as src:
            profile = {
                "driver": "GTiff",
                "width": src.width,
                "height": src.height,
                "count": 1,
                "dtype": "uint8",
                "crs": src.crs,
                "transform": src.transform,
                "compress": "deflate",
            }
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(mask[None])

    _atomic(path, write)
    return mask


def _read(path: Path) -> tuple[np.ndarray, float | None]:
    with gdal_env(), rasterio.open(path) as src:
        return src.read(), src.nodata


def _stretch(pre: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from .evaluate import _stretch_limits

    return _stretch_limits(pre, valid)


def write_png(path: Path, image: np.ndarray) -> None:
    _atomic(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def levircd_pngs(pre_path: Path, post_path: Path, mask: np.ndarray, bands, paths) -> None:
    """A (pre), B (post) as 8-bit RGB with the pre chip's stretch, label as 0/255."""
    from .evaluate import _to_uint8

    pre, nodata = _read(pre_path)
    post, _ = _read(post_path)
    pre, post = pre[list(bands)], post[list(bands)]
    valid = ~nodata_pixels(pre, nodata)
    lo, hi = _stretch(pre, valid)
    write_png(paths[0], _to_uint8(pre, lo, hi))
    write_png(paths[1], _to_uint8(post, lo, hi))
    write_png(paths[2], (mask > 0).astype(np.uint8) * 255)


def _crs_string(crs) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


# ---------------------------------------------------------------------------------- manifest


def load_manifest(outdir: Path) -> dict[str, dict]:
    """Samples already done: a parsable manifest line whose files all exist (last one wins)."""
    path = outdir / MANIFEST
    done: dict[str, dict] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a crash
        if not isinstance(entry, dict) or "sample" not in entry:
            continue
        if all(isinstance(entry.get(k), str) and (outdir / entry[k]).is_file() for k in _FILE_KEYS):
            done[entry["sample"]] = entry
    return done


def _rewrite_manifest(outdir: Path, entries: dict[str, dict]) -> None:
    text = "".join(json.dumps(e) + "\n" for e in entries.values())
    path = outdir / MANIFEST
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    _atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _append_manifest(outdir: Path, entry: dict) -> None:
    with open(outdir / MANIFEST, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------- run


@dataclass
class AugmentResult:
    total: int  # samples planned
    made: int  # made by this run
    skipped: int  # already done by an earlier run
    manifest: Path


def run_augment(
    raster: str | os.PathLike,
    polygons: str | os.PathLike,
    outdir: str | os.PathLike,
    options: AugmentOptions,
    *,
    limit: int | None = None,
    on_sample: SampleHook | None = None,
    quiet: bool = True,
    log: Callable[[str], None] = lambda line: None,
) -> AugmentResult:
    """Make every (polygon, prompt, variant) sample not already in OUTDIR's manifest.

    `limit` stops after that many new samples (the rest is made by a rerun); `on_sample` is
    called after each sample with (done, total) and may raise CancelledError to stop there.
    """
    from tqdm import tqdm

    from .edit import EditOptions, run_edit
    from .evaluate import evaluate_edit

    chips = plan_chips(raster, polygons, options, log=log)
    info = inspect_raster(raster)
    bands_pos = pick_rgb_bands(info.colorinterp, info.data_bands, options.rgb_bands)
    rgb = [info.data_bands[p] for p in bands_pos]
    # Every EditOptions is validated before any work, so a bad prompt fails fast.
    slugs = prompt_slugs(sorted({p for c in chips for p in c.prompts}))
    for prompt in slugs:
        EditOptions(prompt=prompt, preset=options.preset, clip=options.clip).validate()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    cache = outdir / ".cache"
    done = load_manifest(outdir)
    _rewrite_manifest(outdir, done)

    total = sum(len(c.prompts) for c in chips) * options.variants
    finished = sum(
        1
        for c in chips
        for p in c.prompts
        for k in range(1, options.variants + 1)
        if f"{c.feature.id}_{slugs[p]}_v{k}" in done
    )
    made = 0
    bar = tqdm(total=total, initial=finished, desc="augment", unit="sample", disable=quiet)
    try:
        for chip in chips:
            fid = chip.feature.id
            names = [
                (p, k, f"{fid}_{slugs[p]}_v{k}")
                for p in chip.prompts
                for k in range(1, options.variants + 1)
            ]
            todo = [n for n in names if n[2] not in done]
            if not todo:
                continue
            pre, mask_path = outdir / "pre" / f"{fid}.tif", outdir / "mask" / f"{fid}.tif"
            if not pre.is_file():
                write_chip(raster, chip.window, pre)
            if mask_path.is_file():
                mask = _read(mask_path)[0][0]
            else:
                mask = write_mask(chip.roi, chip.window, pre, mask_path)
            with gdal_env(), rasterio.open(pre) as src:
                bounds, crs, width, height = list(src.bounds), src.crs, src.width, src.height
            for prompt, k, name in todo:
                if limit is not None and made >= limit:
                    return AugmentResult(total, made, finished - made, outdir / MANIFEST)
                seed = options.seed + k - 1
                post = outdir / "post" / f"{name}.tif"
                post.parent.mkdir(parents=True, exist_ok=True)
                result = run_edit(
                    pre,
                    post,
                    EditOptions(
                        prompt=prompt,
                        preset=options.preset,
                        clip=options.clip,
                        seed=seed,
                        rgb_bands=options.rgb_bands,
                    ),
                    mask_path=mask_path,
                    device=options.device,
                    cache_dir=cache,
                    log=log,
                )
                report = result.report
                evaluation = evaluate_edit(
                    pre,
                    post,
                    prompt,
                    mask_path=mask_path,
                    clip=options.clip,
                    rgb_bands=options.rgb_bands,
                    device=options.device,
                    prompts=report["prompts"],
                    cache_dir=cache,
                )
                pngs = [outdir / "levircd" / d / f"{name}.png" for d in ("A", "B", "label")]
                levircd_pngs(pre, post, mask, rgb, pngs)
                rel = lambda p: p.relative_to(outdir).as_posix()  # noqa: E731
                entry = {
                    "sample": name,
                    "polygon_id": fid,
                    "prompt": prompt,
                    "prompts": report["prompts"],
                    "variant": k,
                    "seed": seed,
                    "preset": options.preset,
                    "clip": report["clip"],
                    "clip_random": report["clip_random"],
                    "clip_similarity": report["clip_similarity_edits"][0],
                    "clip_score": evaluation["clip_score_edit"],
                    "swd_ratio": evaluation["swd_ratio"],
                    "pre": rel(pre),
                    "post": rel(post),
                    "mask": rel(mask_path),
                    "levircd_a": rel(pngs[0]),
                    "levircd_b": rel(pngs[1]),
                    "levircd_label": rel(pngs[2]),
                    "bounds": bounds,
                    "crs": _crs_string(crs),
                    "width": width,
                    "height": height,
                }
                _append_manifest(outdir, entry)
                done[name] = entry
                made += 1
                finished += 1
                bar.update(1)
                if on_sample is not None:
                    on_sample(finished, total)
    finally:
        bar.close()
    return AugmentResult(total, made, finished - made, outdir / MANIFEST)


__all__ = [
    "AugmentOptions",
    "AugmentResult",
    "MANIFEST_KEYS",
    "load_manifest",
    "parse_prompt_map",
    "plan_chips",
    "prompt_slugs",
    "read_polygons",
    "run_augment",
]
