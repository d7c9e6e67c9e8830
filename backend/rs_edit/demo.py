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

from .edit import EditOptions, run_edit
from .evaluate import evaluate_edit
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
    say(
        f'editing the ROI by the prompt "{DEMO_PROMPT}" (preset tiny: its layout and detail '
        "come from the scene's own patches, no training)"
    )
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
    evaluation = evaluate_edit(
        scene_path,
        edited_path,
        DEMO_PROMPT,
        roi_geojson=roi_path,
        clip=clip,
        prompts=result.report.prompts,
        device=result.report.device,
        png=png_path,
    )
    checks = {
        "georef_identical": evaluation["georef_identical"],
        "outside_identical": evaluation["changed_outside_pixels"] == 0,
        "roi_pixels": evaluation["roi_pixels"],
        "changed_inside": evaluation["changed_inside"],
    }
    seconds = time.perf_counter() - start
    report = result.report
    say(f"edited GeoTIFF: {edited_path}")
    say(f"before/after quicklook: {png_path}")
    say(
        f"CLIP similarity of the ROI to the prompt: before {report.clip_similarity_input:.3f}, "
        f"after {report.clip_similarity_edits[0]:.3f} ({report.clip})"
    )
    say(
        f"checks: georeferencing identical: {checks['georef_identical']}, pixels outside the ROI "
        f"identical: {checks['outside_identical']}, ROI {checks['roi_pixels']} px, "
        f"pixels changed inside: {checks['changed_inside']:.0%}; {seconds:.1f} s"
    )
    return {
        **checks,
        "seconds": seconds,
        "out_dir": str(out_dir),
        "report": report.to_dict(),
        "evaluation": evaluation,
    }
