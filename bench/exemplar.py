"""Exemplar benchmark: edit real tiles toward an example image from another tile, guidance off.

Each case takes a crop and ROI of `bench.realism` and an example (another real image, or
polygons of one), runs the real command line twice in child processes (with `--reference`
and `--reference-weight 1`, and without an example, for the time), and measures:

- Toward: per level (colour, 1, 2, 4 px detail, low-pass), the patch SWD between the ROI of the
  edit and the example, divided by the same distance for the unedited ROI. The example is taken
  as the edit sees it (`rs_edit.example.read_example`: resampled to the tile's resolution and
  bands, its radiometry matched to the tile's). Goal: quadratic mean over levels at most 0.6.
- Seam (`quality.seam_ratio`), as in `bench.realism`: goal 0.8-1.25.
- Copy: the side of the largest square block of the ROI found verbatim in the example (as the
  edit sees it). Goal: at most COPY_LIMIT px (a pasted example is not an edit).
- Time: seconds with the example / without it, on the same case. Goal: at most 1.5.

    .venv/bin/python -m bench.exemplar --out /tmp/exemplar            # all cases
    .venv/bin/python -m bench.exemplar --only forest-harbour --seed 1

Writes OUT/exemplar.md (the table, also printed), OUT/exemplar.json and OUT/contact_sheet.png
(input with the ROI outlined | example | edit, one row per case).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from PIL import Image

from bench.realism import CASES, DEFAULT_IMAGERY, _rgb8, run_cli, write_inputs
from bench.realism import roi_mask as case_roi
from rs_edit.edit import EditOptions, prepare
from rs_edit.engine.quality import largest_copy, roi_swd_levels_to, seam_band, seam_ratio

TOWARD_LIMIT = 0.6
SEAM_RANGE = (0.8, 1.25)
COPY_LIMIT = 32  # as bench.realism: a house or a field corner, not a pasted piece
TIME_LIMIT = 1.5


@dataclass(frozen=True)
class ExemplarCase:
    name: str
    base: str  # the bench.realism case whose crop and ROI are edited
    example: str  # file in the imagery folder
    # Optional polygon of the example to use: a box (col0, row0, col1, row1) in its pixels,
    # written as GeoJSON in its CRS (exercises --reference-roi); None: the whole example.
    example_box: tuple[int, int, int, int] | None
    why: str


EXEMPLAR_CASES = (
    ExemplarCase(
        "forest-harbour", "forest", "keras-rs-retrieval__harbor00.tif", None,
        "canopy toward boats, piers and water (plain images, no georeferencing)",
    ),
    ExemplarCase(
        "harbour-forest", "harbor", "keras-rs-retrieval__forest03.tif", None,
        "a marina toward canopy",
    ),
    ExemplarCase(
        "overpass-river", "overpass", "keras-rs-retrieval__river11.tif", None,
        "roads and verges toward a river between trees",
    ),
    ExemplarCase(
        "naip-2009-water", "naip", "opengeos-data__m_4709963_se_14_1_20090818.tif",
        (360, 360, 580, 540),
        "2020 fields toward a lake polygon of the 2009 image (same sensor, --reference-roi)",
    ),
)  # fmt: skip


def example_roi(case: ExemplarCase, imagery: Path, out: Path) -> Path | None:
    """The case's example box as a GeoJSON polygon in the example's CRS."""
    if case.example_box is None:
        return None
    c0, r0, c1, r1 = case.example_box
    with rasterio.open(imagery / case.example) as src:
        t, crs = src.transform, src.crs
    ring = [list(t * (c, r)) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0))]
    path = out / f"{case.name}_example.geojson"
    path.write_text(json.dumps({
        "type": "Feature", "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "crs": {"type": "name", "properties": {"name": crs.to_string()}},
    }))  # fmt: skip
    return path


def run_case(case: ExemplarCase, imagery: Path, out: Path, preset: str, seed: int) -> dict:
    base = next(c for c in CASES if c.name == case.base)
    crop, mask = write_inputs(base, imagery, out)
    polygons = example_roi(case, imagery, out)
    edited, plain = out / f"{case.name}_edit.tif", out / f"{case.name}_plain.tif"
    common = [
        "edit", str(crop), "--mask", str(mask), "--prompt", "exemplar benchmark",
        "--guidance", "none", "--clip", "tiny-random", "--preset", preset, "--seed", str(seed),
        "--device", "cpu", "--no-cache", "--quiet",
    ]  # fmt: skip
    with_example = ["--reference", str(imagery / case.example), "--reference-weight", "1"]
    if polygons is not None:
        with_example += ["--reference-roi", str(polygons)]
    seconds, peak_mb, _ = run_cli([*common, *with_example, "-o", str(edited)])
    plain_seconds, _, _ = run_cli([*common, "-o", str(plain)])

    # The example as the edit sees it: the tile's resolution, bands and radiometry.
    options = EditOptions(
        prompt="x", reference=str(imagery / case.example),
        reference_roi=str(polygons) if polygons else None,
    )  # fmt: skip
    tile = prepare(crop, options, mask_path=mask)
    example = tile.scaling.inverse(tile.example.image)
    example_valid = torch.from_numpy(tile.example.valid)
    with rasterio.open(crop) as src, rasterio.open(edited) as dst:
        before, after = src.read(), dst.read()
        report = json.loads(dst.tags().get("RS_EDIT", "{}"))
    bands = list(tile.info.data_bands)
    roi = torch.from_numpy(case_roi(base))
    b, a = (torch.from_numpy(x[bands].astype(np.float32)) for x in (before, after))
    ex = torch.from_numpy(example.astype(np.float32))
    to_example = [(ex, example_valid, 1.0)]
    edit_d = roi_swd_levels_to(a, roi, to_example)
    input_d = roi_swd_levels_to(b, roi, to_example)
    toward = [e / max(i, 1e-12) for e, i in zip(edit_d, input_d, strict=True)]
    return {
        "case": case.name,
        "why": case.why,
        "preset": report.get("preset"),
        "reference": report.get("reference"),
        "toward": toward,
        "toward_qmean": math.sqrt(np.nanmean(np.square(toward))),
        "seam": seam_ratio(a, b, roi),
        "copy": largest_copy(after[bands], example, roi.numpy()),
        "outside_changed": int((before != after)[:, ~roi.numpy()].sum()),
        "seconds": round(seconds, 1),
        "plain_seconds": round(plain_seconds, 1),
        "peak_rss_mb": peak_mb,
        "replaced": bool(report.get("realism_replaced")),
        "before": before[bands],
        "example": example,
        "after": after[bands],
        "rgb": list(tile.rgb),
        "roi": roi.numpy(),
    }


def passes(row: dict) -> bool:
    return (
        row["toward_qmean"] <= TOWARD_LIMIT
        and SEAM_RANGE[0] <= row["seam"] <= SEAM_RANGE[1]
        and row["copy"] <= COPY_LIMIT
        and row["seconds"] <= TIME_LIMIT * row["plain_seconds"]
        and row["outside_changed"] == 0
    )


def table(rows: list[dict]) -> str:
    head = (
        "| case | toward (colour / 1px / 2px / 4px / low) | quadratic mean | seam | copy px | "
        "s (without example) | guard | pass |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        toward = " / ".join("-" if math.isnan(v) else f"{v:.2f}" for v in r["toward"])
        lines.append(
            f"| {r['case']} | {toward} | {r['toward_qmean']:.2f} | {r['seam']:.2f} | "
            f"{r['copy']} | {r['seconds']} ({r['plain_seconds']}) | "
            f"{'replaced' if r['replaced'] else 'first'} | {'yes' if passes(r) else 'NO'} |"
        )
    return "\n".join(lines)


def contact_sheet(rows: list[dict], path: Path, height: int = 256) -> None:
    lines = []
    for r in rows:
        before = _rgb8(r["before"], r["rgb"])
        outlined = before.copy()
        edge = seam_band(torch.from_numpy(r["roi"]), 1).numpy() & r["roi"]
        outlined[edge] = (255, 255, 0)
        example = Image.fromarray(_rgb8(r["example"], r["rgb"]))
        width = max(1, round(example.width * height / example.height))
        example = np.asarray(example.resize((width, height), Image.Resampling.LANCZOS))
        lines.append(np.concatenate([outlined, example, _rgb8(r["after"], r["rgb"])], axis=1))
    widest = max(line.shape[1] for line in lines)
    padded = [np.pad(x, ((0, 0), (0, widest - x.shape[1]), (0, 0))) for x in lines]
    Image.fromarray(np.concatenate(padded, axis=0)).save(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--imagery", type=Path, default=DEFAULT_IMAGERY)
    parser.add_argument("--out", type=Path, default=Path("exemplar-out"))
    parser.add_argument("--preset", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="case names")
    args = parser.parse_args(argv)
    if not args.imagery.is_dir():
        print(f"no imagery folder at {args.imagery}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in EXEMPLAR_CASES:
        if args.only and case.name not in args.only:
            continue
        rows.append(run_case(case, args.imagery, args.out, args.preset, args.seed))
        print(table([rows[-1]]).splitlines()[-1], flush=True)
    text = (
        f"preset {args.preset}, seed {args.seed}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores\n\n{table(rows)}\n"
    )
    print(text)
    (args.out / "exemplar.md").write_text(text)
    keep = ("before", "example", "after", "rgb", "roi")
    (args.out / "exemplar.json").write_text(
        json.dumps([{k: v for k, v in r.items() if k not in keep} for r in rows], indent=1)
    )
    contact_sheet(rows, args.out / "contact_sheet.png")
    return 0 if all(passes(r) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
