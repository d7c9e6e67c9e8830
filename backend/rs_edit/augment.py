"""`rs-edit augment`: edited imagery as labelled training data.

For every polygon of a vector layer (GeoJSON, GeoPackage or any vector format GDAL reads, see
`rs_edit.vectors`) a chip of `chip` x `chip` pixels centred on the polygon is cut from the raster
(shifted, not shrunk, to stay inside it; smaller only when the raster is), and the polygon is
edited by each prompt, `variants` times. The output folder holds:

- `pre/<polygon>.tif`: the chip, native values, same CRS and pixel grid as the raster;
- `mask/<polygon>.tif`: uint8 0/1 on the chip's grid: ONLY this polygon (the region that was
  edited, so the only place that can have changed; other polygons in the chip are unchanged);
- `post/<polygon>_<prompt slug>_v<k>.tif`: the edited chip (`rs_edit.edit.run_edit`, the mask as
  ROI, seed `seed + k - 1`); the tile model is trained once per chip and kept in
  `OUTDIR/.cache`, so every prompt and variant of a chip reuses it;
- `levircd/{A,B,label}/<sample>.png`: the LEVIR-CD layout: pre and post as 8-bit RGB (the edit's
  RGB bands; uint8 data as is, other data stretched by the pre chip's 2-98 % percentiles, the
  same limits for pre and post) and the label as 0/255;
- `manifest.jsonl`: one JSON object per sample (`MANIFEST_KEYS`), appended only after the
  sample's files exist. A rerun skips every sample whose manifest line and files exist (and
  whose example, below, is the one asked for now).

With `reference_map` (`--reference-map VALUE=EXAMPLE.tif`, with `--prompt-field`) the polygons
of class VALUE are edited to look like that example image (`EditOptions.reference`, weighed by
`reference_weight`); every example is checked against the raster (`example.plan_example`:
readable, bands that match, a usable size) before any work, and each sample's manifest line
names its example's file and weight (`reference`, `reference_weight`; null without one).

With `remote` (`rs-edit augment --server URL`) the post chips are made as jobs of an
`rs-edit serve` job API, several at a time (`rs_edit.augment_remote`; the server keeps the model
cache then); everything else, and the result, is as above.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from PIL import Image
from pyproj import CRS as ProjCRS
from pyproj.exceptions import CRSError as ProjCRSError
from rasterio.windows import Window
from shapely import affinity

from .bands import rgb_bands as pick_rgb_bands
from .edit import EditOptions
from .engine.presets import DEFAULT_PRESET
from .errors import CrsError, InputError, ParameterError, RoiError
from .example import plan_example
from .files import atomic_path
from .guidance.clip import DEFAULT_CLIP
from .raster import gdal_env, inspect_raster, nodata_pixels
from .roi import Roi, clip_to_raster, reproject, shapely_affine
from .vectors import Feature, read_polygons  # re-exported: callers import them from here

if TYPE_CHECKING:
    from .augment_remote import RemoteOptions

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
    "reference",
    "reference_weight",
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
    # Class value (of `prompt_field`) -> an example image its polygons are edited to look like.
    reference_map: dict[str, str] = field(default_factory=dict)
    reference_weight: float = EditOptions.reference_weight


@dataclass
class Chip:
    feature: Feature
    prompts: list[str]
    roi: Roi  # the polygon on the full raster grid
    window: Window
    reference: str | None = None  # the example image for this polygon's class


def _feature_reference(feature: Feature, options: AugmentOptions) -> str | None:
    """The example image for the polygon's class (`reference_map`), or None."""
    if not options.prompt_field or not options.reference_map:
        return None
    value = feature.properties.get(options.prompt_field)
    return None if value is None else options.reference_map.get(str(value))


# --------------------------------------------------------------------------------- polygons


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


def parse_reference_map(items: Sequence[str]) -> dict[str, str]:
    """'value=EXAMPLE.tif' pairs -> {value: path}; a value given twice is refused."""
    mapping = {}
    for item in items:
        value, sep, path = item.partition("=")
        value, path = value.strip(), path.strip()
        if not sep or not value or not path:
            raise ParameterError(f"--reference-map expects VALUE=EXAMPLE.tif, got {item!r}")
        if value in mapping:
            raise ParameterError(f"--reference-map gives two examples for {value!r}")
        mapping[value] = path
    return mapping


def check_references(raster, options: AugmentOptions) -> None:
    """Every example of `reference_map` against the raster (the chips have its bands and
    resolution): readable, bands that match, a usable size. InputError naming the class."""
    if not options.reference_map:
        return
    if not options.prompt_field:
        raise ParameterError("--reference-map needs --prompt-field (its values are classes)")
    if not 0.0 <= options.reference_weight <= 1.0:
        raise ParameterError(
            f"reference weight must be between 0 and 1, got {options.reference_weight}"
        )
    unmapped = sorted(set(options.reference_map) - set(options.prompt_map))
    if options.prompt_map and unmapped:
        raise ParameterError(
            f"--reference-map names class(es) {', '.join(map(repr, unmapped))} that "
            "--prompt-map does not map to a prompt: those polygons are not edited"
        )
    info = inspect_raster(raster)
    rgb = pick_rgb_bands(info.colorinterp, info.data_bands, options.rgb_bands)
    for value, path in options.reference_map.items():
        if not Path(path).is_file():
            raise ParameterError(f"--reference-map {value}: example image not found: {path}")
        try:
            plan_example(path, info, rgb=rgb)
        except InputError as exc:
            raise type(exc)(f"--reference-map {value}: {exc}") from None


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
    check_references(raster, options)
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
        projected = reproject(feat.geometry, crs, raster_crs)
        pixels = affinity.affine_transform(projected, shapely_affine(~info.transform))
        try:
            roi = clip_to_raster(pixels, info)
        except RoiError as exc:
            raise RoiError(f"polygon {feat.id}: {exc}") from None
        window = chip_window(roi, info.width, info.height, options.chip)
        chips.append(Chip(feat, prompts, roi, window, _feature_reference(feat, options)))
    if not chips:
        raise RoiError("no polygon has a prompt: check --prompt-field / --prompt-map")
    return chips


# ----------------------------------------------------------------------------------- writing


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=path.suffix) as tmp:
        write(tmp)


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


@dataclass
class Sample:
    """One (polygon, prompt, variant) to make: its files and its chip's grid."""

    name: str
    polygon_id: str
    prompt: str
    variant: int
    seed: int
    pre: Path
    mask_path: Path
    mask: np.ndarray
    post: Path
    grid: dict  # the chip's bounds, crs, width and height, as the manifest has them
    reference: str | None = None  # the example image to look like (its class's)


def example_fields(reference: str | None, options: AugmentOptions) -> dict:
    """What the manifest says of a sample's example: its file name and weight (None: none)."""
    if reference is None:
        return {"reference": None, "reference_weight": None}
    return {"reference": Path(reference).name, "reference_weight": options.reference_weight}


def _is_done(done: dict, name: str, chip: Chip, options: AugmentOptions) -> bool:
    """An earlier run made this sample, with the example asked for now (a sample made with
    another example, or none, is made again)."""
    entry = done.get(name)
    if entry is None:
        return False
    wanted = example_fields(chip.reference, options)
    return all(entry.get(key) == value for key, value in wanted.items())


def _samples(raster, chips: list[Chip], slugs, options: AugmentOptions, done, outdir, limit):
    """The samples still to make, in order, at most `limit`; a chip's pre and mask files are
    written when its first sample is asked for (lazily: a remote pool asks as slots free up)."""
    count = 0
    for chip in chips:
        fid = chip.feature.id
        todo = [
            (p, k, f"{fid}_{slugs[p]}_v{k}")
            for p in chip.prompts
            for k in range(1, options.variants + 1)
            if not _is_done(done, f"{fid}_{slugs[p]}_v{k}", chip, options)
        ]
        if limit is not None and count >= limit:
            return
        if not todo:
            continue
        pre, mask_path, mask, grid = _chip_files(raster, chip, Path(outdir))
        for prompt, k, name in todo:
            if limit is not None and count >= limit:
                return
            count += 1
            post = Path(outdir) / "post" / f"{name}.tif"
            seed = options.seed + k - 1
            yield Sample(
                name, fid, prompt, k, seed, pre, mask_path, mask, post, grid, chip.reference
            )


def _chip_files(raster, chip: Chip, outdir: Path):
    """(pre path, mask path, mask, grid) of a chip, writing the files an earlier run did not."""
    fid = chip.feature.id
    pre, mask_path = outdir / "pre" / f"{fid}.tif", outdir / "mask" / f"{fid}.tif"
    if not pre.is_file():
        write_chip(raster, chip.window, pre)
    if mask_path.is_file():
        mask = _read(mask_path)[0][0]
    else:
        mask = write_mask(chip.roi, chip.window, pre, mask_path)
    with gdal_env(), rasterio.open(pre) as src:
        grid = {
            "bounds": list(src.bounds),
            "crs": _crs_string(src.crs),
            "width": src.width,
            "height": src.height,
        }
    return pre, mask_path, mask, grid


class _LocalEdits:
    """Makes each sample's post GeoTIFF in this process, by `run_edit`, one after another.
    The same interface as `augment_remote.RemoteEdits`."""

    def __init__(self, options: AugmentOptions, cache: Path, log):
        self.options, self.cache, self.log = options, cache, log

    def __enter__(self) -> _LocalEdits:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def results(self, samples):
        from .edit import run_edit

        for sample in samples:
            sample.post.parent.mkdir(parents=True, exist_ok=True)
            edit_options = EditOptions(
                prompt=sample.prompt,
                preset=self.options.preset,
                clip=self.options.clip,
                seed=sample.seed,
                rgb_bands=self.options.rgb_bands,
                reference=sample.reference,
                # as a job without an example has it (`augment_remote` sends none then)
                reference_weight=self.options.reference_weight
                if sample.reference
                else EditOptions.reference_weight,
            )
            result = run_edit(
                sample.pre,
                sample.post,
                edit_options,
                mask_path=sample.mask_path,
                device=self.options.device,
                cache_dir=self.cache,
                log=self.log,
            )
            yield sample, result.report.to_dict()  # as a job's report (augment_remote)

    def finished(self, sample: Sample) -> None:
        pass


def _entry(sample: Sample, report: dict, options: AugmentOptions, outdir: Path, rgb, cache):
    """Evaluation and LEVIR-CD PNGs of a sample whose post file exists; its manifest entry."""
    from .evaluate import evaluate_edit

    evaluation = evaluate_edit(
        sample.pre,
        sample.post,
        sample.prompt,
        mask_path=sample.mask_path,
        clip=options.clip,
        rgb_bands=options.rgb_bands,
        device=options.device,
        prompts=report["prompts"],
        cache_dir=cache,
    )
    pngs = [outdir / "levircd" / d / f"{sample.name}.png" for d in ("A", "B", "label")]
    levircd_pngs(sample.pre, sample.post, sample.mask, rgb, pngs)
    rel = lambda p: p.relative_to(outdir).as_posix()  # noqa: E731
    return {
        "sample": sample.name,
        "polygon_id": sample.polygon_id,
        "prompt": sample.prompt,
        "prompts": report["prompts"],
        "variant": sample.variant,
        "seed": sample.seed,
        "preset": options.preset,
        "clip": report["clip"],
        "clip_random": report["clip_random"],
        "clip_similarity": report["clip_similarity_edits"][0],
        "clip_score": evaluation["clip_score_edit"],
        "swd_ratio": evaluation["swd_ratio"],
        "pre": rel(sample.pre),
        "post": rel(sample.post),
        "mask": rel(sample.mask_path),
        "levircd_a": rel(pngs[0]),
        "levircd_b": rel(pngs[1]),
        "levircd_label": rel(pngs[2]),
        **example_fields(sample.reference, options),
        **sample.grid,
    }


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
    remote: RemoteOptions | None = None,
) -> AugmentResult:
    """Make every (polygon, prompt, variant) sample not already in OUTDIR's manifest.

    `limit` stops after that many new samples (the rest is made by a rerun); `on_sample` is
    called after each sample with (done, total) and may raise CancelledError to stop there.
    `remote` sends each sample's edit to an `rs-edit serve` job API, `remote.parallel` jobs at a
    time (`rs_edit.augment_remote`); everything else is done here, one sample at a time.
    """
    from tqdm import tqdm

    chips = plan_chips(raster, polygons, options, log=log)
    info = inspect_raster(raster)
    bands_pos = pick_rgb_bands(info.colorinterp, info.data_bands, options.rgb_bands)
    rgb = [info.data_bands[p] for p in bands_pos]
    # Every EditOptions is validated before any work, so a bad prompt fails fast.
    slugs = prompt_slugs(sorted({p for c in chips for p in c.prompts}))
    for prompt in slugs:
        EditOptions(prompt=prompt, preset=options.preset, clip=options.clip).validate()
    if remote is not None:
        remote = remote.validate()
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
        if _is_done(done, f"{c.feature.id}_{slugs[p]}_v{k}", c, options)
    )
    made = 0
    if remote is None:
        edits = _LocalEdits(options, cache, log)
    else:
        from .augment_remote import RemoteEdits

        edits = RemoteEdits(remote, options, outdir, done, log)
    samples = _samples(raster, chips, slugs, options, done, outdir, limit)
    bar = tqdm(total=total, initial=finished, desc="augment", unit="sample", disable=quiet)
    try:
        with edits:
            for sample, report in edits.results(samples):
                entry = _entry(sample, report, options, outdir, rgb, cache)
                _append_manifest(outdir, entry)  # the one place the manifest grows
                edits.finished(sample)
                done[sample.name] = entry
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
    "check_references",
    "load_manifest",
    "parse_prompt_map",
    "parse_reference_map",
    "plan_chips",
    "prompt_slugs",
    "read_polygons",
    "run_augment",
]
