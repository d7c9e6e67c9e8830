"""The paper's scenario benchmark: six prompts, each on a real tile with a fixed ROI.

Each scenario is edited twice with the same seed: WITH prompt ensembling (the prompt plus the
built-in template synonyms, `llm="none"`) and WITHOUT it (`prompt_ensemble=False`: the prompt
alone). Both edits share the trained
tile model (same preset, same tile: the model cache under OUT/cache), so the second run only
guides and samples.

Both edits, and the input, are scored by `rs_edit.evaluate.evaluate_edit` against the PLAIN prompt
(one text embedding), so the two columns are comparable; the ensemble-target scores are in the
JSON too. Reported per scenario: CLIP score of the input, of the edit with PE and without PE,
the patch SWD ratio (with PE), the fraction of pixels changed outside the ROI (must be 0) and
seconds.

    .venv/bin/python -m bench.scenarios --preset tiny --clip tiny-random --out /tmp/scen
    .venv/bin/python bench/scenarios.py --only fire --preset fast

ROIs are polygons in fractional pixel coordinates (x = column / width, y = row / height). On a
georeferenced tile they become a GeoJSON polygon in the raster's CRS (a named 'crs' member); on
a plain image, a mask raster on its grid. Writes OUT/scenarios.md (the table, also printed),
OUT/scenarios.json and OUT/contact_sheet.png (before | after per scenario, ROI outlined).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `backend` importable
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from rs_edit.edit import EditOptions, run_edit  # noqa: E402
from rs_edit.engine.presets import PRESETS  # noqa: E402
from rs_edit.evaluate import evaluate_edit  # noqa: E402
from rs_edit.guidance.clip import DEFAULT_CLIP, TINY_RANDOM, find_local_weights  # noqa: E402

DEFAULT_IMAGERY = REPO.parent / "shared" / "data" / "imagery"
RANDOM_NOTE = "scores are meaningless with random CLIP weights"


@dataclass(frozen=True)
class Scenario:
    name: str  # short id for --only
    prompt: str
    image: str  # file name in the imagery folder
    roi: tuple[tuple[float, float], ...]  # polygon, fractional (x, y) pixel coordinates
    why: str  # what the ROI covers


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "fire",
        "A fire in the forest",
        "keras-rs-retrieval__forest03.tif",
        ((0.30, 0.28), (0.68, 0.25), (0.74, 0.55), (0.62, 0.74), (0.34, 0.70), (0.26, 0.50)),
        "centre of a forest patch (UC Merced, plain image: pixel mask)",
    ),
    Scenario(
        "bridge",
        "The bridge is collapsed",
        "keras-rs-retrieval__overpass03.tif",
        ((0.30, 0.30), (0.70, 0.30), (0.70, 0.70), (0.30, 0.70)),
        "central square over the overpass (plain image: pixel mask)",
    ),
    Scenario(
        "flood",
        "The river is flooding",
        "keras-rs-retrieval__river11.tif",
        ((0.25, 0.20), (0.75, 0.20), (0.80, 0.80), (0.20, 0.80)),
        "the river and its banks (plain image: pixel mask)",
    ),
    Scenario(
        "house",
        "The house is damaged",
        "solaris__sample_geotiff.tif",
        ((0.58, 0.34), (0.72, 0.34), (0.72, 0.47), (0.58, 0.47)),
        "houses in a forest clearing (SpaceNet 0.5 m panchromatic, GeoJSON in EPSG:32616)",
    ),
    Scenario(
        "ship",
        "ship on fire",
        "keras-rs-retrieval__harbor00.tif",
        ((0.35, 0.35), (0.65, 0.35), (0.65, 0.65), (0.35, 0.65)),
        "boats at the piers (plain image: pixel mask)",
    ),
    Scenario(
        "tsunami",
        "a picture of ground after tsunami",
        "rasterio__RGB.byte.tif",
        ((0.22, 0.48), (0.36, 0.46), (0.38, 0.60), (0.24, 0.62)),
        "west coast of Andros Island, land and sea (Landsat 300 m, GeoJSON in EPSG:32618)",
    ),
)


# --- ROIs -------------------------------------------------------------------------------------


def pixel_ring(roi: Sequence[tuple[float, float]], width: int, height: int) -> list[tuple]:
    """Fractional (x, y) -> (col, row) pixel coordinates, closed ring."""
    ring = [(x * width, y * height) for x, y in roi]
    return [*ring, ring[0]]


def is_georeferenced(path: Path) -> bool:
    with rasterio.open(path) as src:
        return src.crs is not None and not src.transform.is_identity


def roi_geojson(path: Path, roi: Sequence[tuple[float, float]]) -> dict:
    """The polygon in the raster's CRS, as GeoJSON with a named 'crs' member."""
    with rasterio.open(path) as src:
        ring = [tuple(src.transform * xy) for xy in pixel_ring(roi, src.width, src.height)]
        crs = src.crs.to_string()
    return {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": crs}},
        "features": [
            {
                "type": "Feature",
                "properties": {},
                "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring]]},
            }
        ],
    }


def roi_mask(path: Path, roi: Sequence[tuple[float, float]], out: Path) -> Path:
    """A uint8 mask raster on the plain image's grid (1 = edit)."""
    with rasterio.open(path) as src:
        width, height = src.width, src.height
    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).polygon(pixel_ring(roi, width, height)[:-1], fill=1)
    mask = np.asarray(img, dtype=np.uint8)[None]
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint8"}
    with rasterio.Env(), rasterio.open(out, "w", **profile) as dst:
        dst.write(mask)
    return out


# --- runs -------------------------------------------------------------------------------------


def default_clip() -> str:
    return DEFAULT_CLIP if find_local_weights(DEFAULT_CLIP) is not None else TINY_RANDOM


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def run_scenario(
    scenario: Scenario, imagery: Path, out: Path, *, preset: str, clip: str, seed: int, log
) -> dict:
    image = imagery / scenario.image
    work = out / scenario.name
    work.mkdir(parents=True, exist_ok=True)
    roi: dict = {}
    if is_georeferenced(image):
        roi["roi_geojson"] = roi_geojson(image, scenario.roi)
        (work / "roi.geojson").write_text(json.dumps(roi["roi_geojson"], indent=1))
    else:
        roi["mask_path"] = roi_mask(image, scenario.roi, work / "roi_mask.tif")

    row: dict = {
        "name": scenario.name,
        "prompt": scenario.prompt,
        "image": scenario.image,
        "roi_fractional": [list(p) for p in scenario.roi],
        "roi_note": scenario.why,
    }
    runs = {}
    for label in ("pe", "no_pe"):
        options = EditOptions(
            prompt=scenario.prompt,
            preset=preset,
            seed=seed,
            clip=clip,
            prompt_ensemble=label == "pe",
        )
        output = work / f"edit_{label}.tif"
        started = time.perf_counter()
        result = run_edit(
            image, output, options, device="cpu", cache_dir=out / "cache", log=log, **roi
        )
        seconds = time.perf_counter() - started
        plain = evaluate_edit(
            image,
            output,
            scenario.prompt,
            clip=clip,
            prompts=[scenario.prompt],
            png=work / f"quicklook_{label}.png",
            **roi,
        )
        ensemble = evaluate_edit(
            image, output, scenario.prompt, clip=clip, prompts=result.report.prompts, **roi
        )
        runs[label] = {
            "seconds": round(seconds, 2),
            "editor_seconds": result.report.seconds,
            "model_cached": result.report.model_cached,
            "prompts": result.report.prompts,
            "clip_score_edit": plain["clip_score_edit"],
            "clip_similarity_edit": plain["clip_similarity_edit"],
            "clip_score_edit_vs_own_prompts": ensemble["clip_score_edit"],
            "swd_ratio": _finite(plain["swd_ratio"]),
            "changed_inside": plain["changed_inside"],
            "changed_outside": plain["changed_outside"],
            "changed_outside_pixels": plain["changed_outside_pixels"],
            "quicklook": plain["png"],
        }
        row.setdefault("clip", plain["clip"])
        row.setdefault("clip_random", plain["clip_random"])
        row.setdefault("clip_score_input", plain["clip_score_input"])
        row.setdefault("clip_similarity_input", plain["clip_similarity_input"])
        row.setdefault("roi_pixels", plain["roi_pixels"])
        row.setdefault("window", plain["window"])
    row["runs"] = runs
    row["clip_score_pe"] = runs["pe"]["clip_score_edit"]
    row["clip_score_no_pe"] = runs["no_pe"]["clip_score_edit"]
    row["swd_ratio"] = runs["pe"]["swd_ratio"]
    row["changed_outside"] = max(runs["pe"]["changed_outside"], runs["no_pe"]["changed_outside"])
    row["seconds_pe"] = runs["pe"]["seconds"]
    row["seconds_no_pe"] = runs["no_pe"]["seconds"]
    return row


# --- outputs ----------------------------------------------------------------------------------


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict], meta: dict) -> str:
    lines = [
        f"CLIP: `{meta['clip']}`"
        + (f" (**random weights: {RANDOM_NOTE}**)" if meta["clip_random"] else "")
        + f"; preset `{meta['preset']}`, seed {meta['seed']}, device cpu.",
        "CLIP scores (100 * max(cos, 0)) of the ROI's bounding box against the plain prompt.",
        "",
        "| scenario | prompt | tile | CLIP input | CLIP ours (PE) | CLIP ours (no PE) | SWD ratio "
        "| changed outside ROI | time PE / no PE (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['prompt']} | {r['image']} | {_fmt(r['clip_score_input'])} "
            f"| {_fmt(r['clip_score_pe'])} | {_fmt(r['clip_score_no_pe'])} "
            f"| {_fmt(r['swd_ratio'], 3)} | {r['changed_outside']:.6g} "
            f"| {r['seconds_pe']:.1f} / {r['seconds_no_pe']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def contact_sheet(rows: list[dict], png: Path, label_height: int = 18) -> Path:
    """Stack each scenario's before | after quicklook (PE edit), with its prompt above it."""
    panels = []
    for r in rows:
        img = Image.open(r["runs"]["pe"]["quicklook"]).convert("RGB")
        if img.height != 256:
            img = img.resize((round(img.width * 256 / img.height), 256), Image.Resampling.BOX)
        panels.append((f"{r['name']}: {r['prompt']}  (before | after, PE)", img))
    width = max(img.width for _, img in panels)
    height = sum(img.height + label_height for _, img in panels)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = 0
    for label, img in panels:
        draw.text((4, y + 3), label, fill=(0, 0, 0))
        sheet.paste(img, (0, y + label_height))
        y += img.height + label_height
    sheet.save(png, format="PNG")
    return png


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
    parser.add_argument("--clip", default=None, help="default: RemoteCLIP-ViT-B-32 if local")
    parser.add_argument("--out", default="bench_scenarios_out", type=Path)
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--only", action="append", help="scenario name (repeatable)")
    parser.add_argument("--imagery", default=DEFAULT_IMAGERY, type=Path)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    chosen = list(SCENARIOS)
    if args.only:
        names = {s.name for s in SCENARIOS}
        unknown = [n for n in args.only if n not in names]
        if unknown:
            parser.error(f"unknown scenario(s) {unknown}; known: {sorted(names)}")
        chosen = [s for s in SCENARIOS if s.name in args.only]
    missing = [s.image for s in chosen if not (args.imagery / s.image).is_file()]
    if missing:
        print(f"missing imagery in {args.imagery}: {missing}", file=sys.stderr)
        return 2
    clip = args.clip or default_clip()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        if not args.quiet:
            print(f"  {line}", file=sys.stderr)

    rows = []
    started = time.perf_counter()
    command = "python -m bench.scenarios " + " ".join(sys.argv[1:] if argv is None else argv)
    for scenario in chosen:
        print(f"[{scenario.name}] {scenario.prompt!r} on {scenario.image}", file=sys.stderr)
        rows.append(
            run_scenario(
                scenario,
                args.imagery,
                out,
                preset=args.preset,
                clip=clip,
                seed=args.seed,
                log=log,
            )
        )
        meta = {
            "clip": rows[0]["clip"],
            "clip_random": rows[0]["clip_random"],
            "preset": args.preset,
            "seed": args.seed,
            "machine": f"{platform.machine()}, {platform.system()}, {os.cpu_count()} CPUs",
            "seconds_total": round(time.perf_counter() - started, 1),
            "complete": len(rows) == len(chosen),
            "command": command,
        }
        # Written after every scenario, so an interrupted run keeps what it finished.
        table = markdown_table(rows, meta)
        (out / "scenarios.md").write_text(table)
        (out / "scenarios.json").write_text(json.dumps({"meta": meta, "scenarios": rows}, indent=2))
        contact_sheet(rows, out / "contact_sheet.png")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
