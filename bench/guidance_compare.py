"""Fine-tuning vs guided sampling vs no guidance, on one generated scene (docs/BENCHMARKS.md).

    .venv/bin/python -m bench.guidance_compare [--strengths 2 20 100 400] [--clip tiny-random]

Trains the scene once (`tiny`, cached in a temporary folder), then edits the ROI with each
guidance and prints, per run, the editor's CLIP similarity of the ROI box for each of 2 variants,
the mean difference between the two variants inside the ROI, and the seconds spent guiding and
sampling. With `tiny-random` the similarities only show that the optimisation works.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np

from rs_edit.edit import EditOptions, prepare
from rs_edit.guidance.editor import TextEditor
from rs_edit.scene import make_scene, roi_geojson, write_scene


def run(guidance: str, strength: float | None, folder: Path, clip: str) -> dict:
    options = EditOptions(
        prompt="flooded fields", preset="tiny", clip=clip, seed=5, guidance=guidance, variants=2
    ).validate()
    tile = prepare(folder / "scene.tif", options, roi_geojson=folder / "roi.geojson")
    editor = TextEditor(options, device="cpu", cache_dir=folder / "cache")
    if strength is not None:
        editor.preset = dataclasses.replace(editor.preset, guide_scale=strength)
    edits = editor.edit(tile, lambda *a, **k: None)
    inside = tile.alpha > 0.5
    report = editor.report
    return {
        "guidance": guidance if strength is None else f"{guidance} {strength:g}",
        "input": report.clip_similarity_input,
        "variants": report.clip_similarity_edits,
        "variant_difference": round(float(np.abs(edits[0] - edits[1])[:, inside].mean()), 3),
        "seconds": round(report.seconds["guidance"] + report.seconds["sample"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strengths", type=float, nargs="+", default=[2, 20, 100, 400])
    parser.add_argument("--clip", default="tiny-random")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rs-edit-guidance-") as tmp:
        folder = Path(tmp)
        scene = make_scene(72, seed=3)
        write_scene(scene, folder / "scene.tif")
        (folder / "roi.geojson").write_text(json.dumps(roi_geojson(scene)))
        runs = [("none", None), ("finetune", None)]
        runs += [("sampling", s) for s in args.strengths]
        for guidance, strength in runs:
            print(json.dumps(run(guidance, strength, folder, args.clip)), flush=True)


if __name__ == "__main__":
    main()
