"""`rs-edit demo`: the main job on a generated scene, offline, no arguments.

It makes a georeferenced sample scene (fields, a river, roads, building blocks; UTM), an ROI
polygon over the building blocks (EPSG:4326 GeoJSON, as a user would draw it), edits it by a
prompt with the `tiny` preset, checks that georeferencing and every pixel outside the ROI came
back exactly, and writes a before/after quicklook. CLIP is RemoteCLIP when its weights are on
this machine, else the built-in random `tiny-random` (and it says that guidance is then
meaningless).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw

from .edit import EditOptions, prepare, run_edit
from .guidance.clip import DEFAULT_CLIP, TINY_RANDOM, find_local_weights
from .progress import tqdm_progress
from .scene import make_scene, roi_geojson, write_scene

DEMO_PROMPT = "flooded fields"


def run_demo(
    out_dir: Path,
    *,
    size: int = 128,
    seed: int = 0,
    quiet: bool = False,
    cache_dir: Path | None = None,
) -> dict:
    """Write scene.tif, roi.geojson, edited.tif and before_after.png into `out_dir`."""
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if quiet else print

    scene = make_scene(size, seed=seed)
    scene_path, roi_path = out_dir / "scene.tif", out_dir / "roi.geojson"
    edited_path, png_path = out_dir / "edited.tif", out_dir / "before_after.png"
    write_scene(scene, scene_path)
    roi_path.write_text(json.dumps(roi_geojson(scene), indent=1))
    say(f"scene: {size}x{size} px, {scene.crs.to_string()}, written to {scene_path}")
    say(f"ROI polygon (EPSG:4326 GeoJSON) over the building blocks: {roi_path}")

    clip = DEFAULT_CLIP if find_local_weights(DEFAULT_CLIP) else TINY_RANDOM
    if clip == TINY_RANDOM:
        say(
            f"CLIP: {TINY_RANDOM} (random weights: the edit is NOT steered by the prompt). For "
            f"real guidance put RemoteCLIP-ViT-B-32.pt where `rs-edit edit --clip {DEFAULT_CLIP}` "
            "looks for it (see the README)."
        )
    else:
        say(f"CLIP: {clip}")
    options = EditOptions(prompt=DEMO_PROMPT, preset="tiny", clip=clip, seed=seed)
    say(f'editing the ROI by the prompt "{DEMO_PROMPT}" (preset tiny: learns the scene first)')
    progress, close = tqdm_progress(enabled=not quiet)
    with tempfile.TemporaryDirectory(prefix="rs-edit-demo-") as scratch:
        try:
            result = run_edit(
                scene_path,
                edited_path,
                options,
                roi_geojson=roi_path,
                progress=progress,
                cache_dir=cache_dir or Path(scratch),
            )
        finally:
            close()
    tile = prepare(scene_path, options, roi_geojson=roi_path)
    checks = _check_result(scene_path, edited_path, tile)
    _before_after_png(scene_path, edited_path, tile, png_path)
    seconds = time.perf_counter() - start
    report = result.report
    say(f"edited GeoTIFF: {edited_path}")
    say(f"before/after quicklook: {png_path}")
    say(
        f"CLIP similarity of the ROI to the prompt: before {report['clip_similarity_input']:.3f}, "
        f"after {report['clip_similarity_edits'][0]:.3f} ({report['clip']})"
    )
    say(
        f"checks: georeferencing identical: {checks['georef_identical']}, pixels outside the ROI "
        f"identical: {checks['outside_identical']}, ROI {checks['roi_pixels']} px, "
        f"pixels changed inside: {checks['changed_inside']:.0%}; {seconds:.1f} s"
    )
    return {**checks, "seconds": seconds, "out_dir": str(out_dir), "report": report}


def _check_result(before: Path, after: Path, tile) -> dict:
    with rasterio.open(before) as a, rasterio.open(after) as b:
        georef = (a.crs, a.transform, a.dtypes, a.nodata) == (
            b.crs,
            b.transform,
            b.dtypes,
            b.nodata,
        )
        pa, pb = a.read(), b.read()
    outside = np.ones(pa.shape[1:], dtype=bool)
    w = tile.window
    rows = slice(int(w.row_off), int(w.row_off + w.height))
    cols = slice(int(w.col_off), int(w.col_off + w.width))
    outside[rows, cols] = ~tile.roi_mask
    inside = ~outside
    return {
        "georef_identical": bool(georef),
        "outside_identical": bool((pa[:, outside] == pb[:, outside]).all()),
        "changed_inside": float((pa[:, inside] != pb[:, inside]).any(0).mean()),
        "roi_pixels": int(tile.roi_mask.sum()),
    }


def _before_after_png(before: Path, after: Path, tile, png: Path, scale: int = 2) -> None:
    """Side-by-side RGB quicklook with the ROI outlined in yellow."""
    panels = []
    for path in (before, after):
        with rasterio.open(path) as src:
            rgb = np.moveaxis(src.read([1, 2, 3]), 0, -1)
        img = Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale))
        draw = ImageDraw.Draw(img)
        for poly in getattr(tile.roi.pixels, "geoms", [tile.roi.pixels]):
            xy = [(x * scale, y * scale) for x, y in poly.exterior.coords]
            draw.line(xy, fill=(255, 230, 0), width=2)
        panels.append(img)
    gap = 8
    sheet = Image.new("RGB", (panels[0].width * 2 + gap, panels[0].height), (255, 255, 255))
    sheet.paste(panels[0], (0, 0))
    sheet.paste(panels[1], (panels[0].width + gap, 0))
    sheet.save(png)
