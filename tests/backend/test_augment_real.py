"""`rs-edit augment` with the real editor (tiny preset, tiny-random CLIP, CPU) on real imagery.

rasterio's RGB.byte.tif from the shared imagery folder (uint8, 3 bands, UTM 18N, nodata 0 around a
rotated image): 3 polygons x 2 prompts x 2 variants on 32 px chips. The 12 samples are made once,
by an interrupted run (`limit=5`) and a rerun that makes the 7 missing ones, so the same files
check the outputs, the resume and the per-chip model cache (about 40 s on 2 CPU cores).
Skips when the shared folder is absent (a user's checkout has none).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import SHARED_IMAGERY, trained_tiny_preset
from PIL import Image
from rasterio import features
from shapely import affinity
from shapely.geometry import Polygon, box, mapping

from rs_edit.augment import MANIFEST_KEYS, AugmentOptions, AugmentResult, run_augment
from rs_edit.engine import presets

RASTER = SHARED_IMAGERY / "rasterio__RGB.byte.tif"
if not RASTER.is_file():
    pytest.skip(f"shared imagery {RASTER.name} is absent", allow_module_level=True)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::rs_edit.guidance.clip.RandomClipWarning"),
]

PROMPTS = ["flooded fields", "burned forest"]
CHIP = 32
# Polygons in pixel coordinates (col, row) of the raster, all well inside its valid area: their
# 32 px chips hold no nodata pixel.
PIXEL_POLYGONS = [
    box(294.6, 244.3, 306.2, 254.8),
    Polygon([(392.5, 352.0), (409.0, 356.5), (403.5, 369.5), (389.0, 364.0)]),
    Polygon([(241.0, 392.0), (259.0, 392.0), (259.0, 397.0), (247.0, 397.0), (247.0, 409.0),
             (241.0, 409.0)]),
]  # fmt: skip
FIRST = 5  # samples made by the interrupted run


def options() -> AugmentOptions:
    return AugmentOptions(
        prompts=PROMPTS, variants=2, chip=CHIP, preset="tiny", clip="tiny-random", device="cpu"
    )


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def models(out: Path) -> dict[str, tuple[str, int]]:
    """The cached tile models: name -> (content hash, mtime)."""
    folder = out / ".cache" / "models"
    return {p.name: (sha(p), p.stat().st_mtime_ns) for p in sorted(folder.glob("*.pt"))}


@dataclass
class Runs:
    out: Path
    polys: list  # the polygons in the raster's CRS, by id - 1
    first: AugmentResult
    first_lines: list[dict]
    first_files: dict[str, tuple[str, int]]  # every file after the first run: (hash, mtime)
    first_models: dict[str, tuple[str, int]]
    first_log: list[str]
    second: AugmentResult
    second_log: list[str]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    folder = tmp_path_factory.mktemp("augment_real")
    with rasterio.open(RASTER) as src:
        t, epsg = src.transform, src.crs.to_epsg()
    to_world = [t.a, t.b, t.d, t.e, t.c, t.f]
    polys = [affinity.affine_transform(p, to_world) for p in PIXEL_POLYGONS]
    feats = [
        {"type": "Feature", "id": i, "properties": {}, "geometry": mapping(p)}
        for i, p in enumerate(polys, start=1)
    ]
    crs = {"type": "name", "properties": {"name": f"EPSG:{epsg}"}}
    geojson = folder / "polygons.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "crs": crs, "features": feats}))
    out = folder / "out"

    with pytest.MonkeyPatch.context() as patch:  # the trained path: one model per chip
        patch.setitem(presets.PRESETS, "tiny", trained_tiny_preset())
        first_log: list[str] = []
        first = run_augment(RASTER, geojson, out, options(), limit=FIRST, log=first_log.append)
        first_lines = manifest(out)
        files = [p for p in out.rglob("*") if p.is_file() and ".cache" not in p.parts]
        first_files = {
            p.relative_to(out).as_posix(): (sha(p), p.stat().st_mtime_ns)
            for p in files
            if p.name != "manifest.jsonl"
        }
        first_models = models(out)
        second_log: list[str] = []
        second = run_augment(RASTER, geojson, out, options(), log=second_log.append)
    return Runs(
        out, polys, first, first_lines, first_files, first_models, first_log, second, second_log
    )


def test_twelve_real_samples_on_one_grid(runs: Runs):
    out = runs.out
    with rasterio.open(RASTER) as src:
        src_crs, src_dtype, src_nodata = src.crs, src.dtypes[0], src.nodata
        full = src.read()
        raster_window = src.window
    lines = manifest(out)
    names = [e["sample"] for e in lines]
    assert len(lines) == 12 and len(set(names)) == 12
    combos = {(e["polygon_id"], e["prompt"], e["variant"]) for e in lines}
    assert combos == {(str(i), p, k) for i in (1, 2, 3) for p in PROMPTS for k in (1, 2)}
    for entry in lines:
        assert set(MANIFEST_KEYS) <= set(entry), set(MANIFEST_KEYS) - set(entry)
        assert entry["crs"] == f"EPSG:{src_crs.to_epsg()}"
        assert entry["clip"] == "tiny-random" and entry["clip_random"] is True
        assert entry["preset"] == "tiny" and entry["seed"] == entry["variant"] - 1
        assert (entry["width"], entry["height"]) == (CHIP, CHIP)
        assert entry["prompt"] in entry["prompts"]
        assert entry["swd_ratio"] is not None and entry["clip_score"] is not None
        grids = []
        for key in ("pre", "post", "mask"):
            with rasterio.open(out / entry[key]) as f:
                grids.append((f.crs, f.transform, f.width, f.height))
                assert list(f.bounds) == pytest.approx(entry["bounds"], abs=1e-6)
                assert f.crs == src_crs
        assert grids[0] == grids[1] == grids[2] and grids[0][2:] == (CHIP, CHIP)

        with rasterio.open(out / entry["mask"]) as f:
            mask = f.read(1)
            assert f.dtypes[0] == "uint8"
            poly = runs.polys[int(entry["polygon_id"]) - 1]
            expected = features.rasterize([poly], out_shape=mask.shape, transform=f.transform)
        assert set(np.unique(mask)) == {0, 1} and np.array_equal(mask, expected)

        with rasterio.open(out / entry["pre"]) as a, rasterio.open(out / entry["post"]) as b:
            before, after = a.read(), b.read()
            assert b.dtypes == a.dtypes == (src_dtype,) * 3
            assert b.nodata == a.nodata == src_nodata
            # The chip is the raster's pixels at its window, all valid here.
            window = raster_window(*a.bounds)
            r0, c0 = round(window.row_off), round(window.col_off)
            assert np.array_equal(before, full[:, r0 : r0 + CHIP, c0 : c0 + CHIP])
        assert (before != src_nodata).all()
        inside = mask == 1
        assert np.array_equal(before[:, ~inside], after[:, ~inside])
        assert (before[:, inside] != after[:, inside]).any()
        assert (after[:, inside] != src_nodata).all()  # the edit made no hole

        a_png, b_png = (np.asarray(Image.open(out / entry[k])) for k in ("levircd_a", "levircd_b"))
        label = np.asarray(Image.open(out / entry["levircd_label"]))
        assert a_png.shape == b_png.shape == (CHIP, CHIP, 3) and label.shape == (CHIP, CHIP)
        assert a_png.dtype == b_png.dtype == label.dtype == np.uint8
        assert np.array_equal(label, mask * 255)
        assert np.array_equal(a_png, np.moveaxis(before, 0, -1))  # uint8: no stretch
        assert np.array_equal(b_png, np.moveaxis(after, 0, -1))


def test_rerun_after_interruption_makes_only_what_is_missing(runs: Runs):
    out = runs.out
    assert (runs.first.total, runs.first.made, runs.first.skipped) == (12, FIRST, 0)
    assert len(runs.first_lines) == FIRST
    assert (runs.second.total, runs.second.made, runs.second.skipped) == (12, 7, FIRST)
    lines = manifest(out)
    assert lines[:FIRST] == runs.first_lines  # the rerun only appended
    first_names = {e["sample"] for e in runs.first_lines}
    assert len({e["sample"] for e in lines[FIRST:]} - first_names) == 7
    # Chip 3 was not reached by the interrupted run: its pre and mask files came with the rerun.
    assert "pre/3.tif" not in runs.first_files and "mask/3.tif" not in runs.first_files
    # Nothing the first run wrote was rewritten (same bytes, same mtime).
    for rel, (digest, mtime) in runs.first_files.items():
        path = out / rel
        assert (sha(path), path.stat().st_mtime_ns) == (digest, mtime), rel
    for entry in runs.first_lines:
        for key in ("pre", "post", "mask", "levircd_a", "levircd_b", "levircd_label"):
            assert entry[key] in runs.first_files


def test_one_model_per_chip_trained_once(runs: Runs):
    """Every prompt and variant of a chip reuses its model; the rerun reuses the cached ones."""
    reused = lambda log: [line for line in log if "reusing the trained tile model" in line]  # noqa: E731
    # Interrupted run: chip 1 (4 samples) and chip 2 (1 sample): 2 models, 3 reuses.
    assert len(runs.first_models) == 2 and len(reused(runs.first_log)) == 3
    # Rerun: chip 2's model is reused 3 times, chip 3's trained once and reused 3 times.
    now = models(runs.out)
    assert len(now) == 3 and set(runs.first_models) < set(now)
    assert len(reused(runs.second_log)) == 6
    (new,) = set(now) - set(runs.first_models)
    assert sum(new in line for line in runs.second_log if "reusing" in line) == 3
    for name, (digest, _) in runs.first_models.items():
        assert now[name][0] == digest  # never retrained
    # Chip 1's model was not even loaded by the rerun (all its samples were done).
    untouched = [n for n in runs.first_models if not any(n in line for line in runs.second_log)]
    assert len(untouched) == 1 and now[untouched[0]][1] == runs.first_models[untouched[0]][1]
