"""`rs-edit eval` / `evaluate_edit`: CLIP scores, SWD ratio, changed pixels, the quicklook."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import random_data, write_raster
from PIL import Image
from rasterio.transform import from_origin

from rs_edit import evaluate
from rs_edit.cli import main
from rs_edit.errors import InputError
from rs_edit.evaluate import evaluate_edit, quicklook_png

PROMPT = "flooded fields"
KEYS = {
    "clip",
    "clip_random",
    "prompts",
    "clip_similarity_input",
    "clip_similarity_edit",
    "clip_score_input",
    "clip_score_edit",
    "swd_ratio",
    "changed_inside",
    "changed_outside",
    "roi_pixels",
    "png",
}
# A 120x120 raster, an ROI mask of 10x10 px at rows/cols 20..29: the window (ROI + 16 px
# context) is rows/cols 4..45, so pixel (110, 110) lies far outside it.
SIZE, ROI, CONTEXT = 120, (slice(20, 30), slice(20, 30)), 16


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("eval")
    data = random_data("uint8", 3, SIZE, SIZE, seed=1)
    mask = np.zeros((1, SIZE, SIZE), np.uint8)
    mask[(0, *ROI)] = 1
    inside = data.copy()
    inside[(slice(None), *ROI)] = 255 - inside[(slice(None), *ROI)]  # every ROI pixel changes
    far = data.copy()
    far[0, 110, 110] ^= 1
    shifted = from_origin(500000.0 + 10, 5500000.0, 10, 10)
    return {
        "before": write_raster(folder / "before.tif", data),
        "same": write_raster(folder / "same.tif", data.copy()),
        "inside": write_raster(folder / "inside.tif", inside),
        "far": write_raster(folder / "far.tif", far),
        "shifted": write_raster(folder / "shifted.tif", data, transform=shifted),
        "small": write_raster(folder / "small.tif", data[:, :60, :60]),
        "mask": write_raster(folder / "mask.tif", mask),
        "folder": folder,
    }


def run(files, after: str, **kw) -> dict:
    kw = {"mask_path": files["mask"], "clip": "tiny-random", "context_px": CONTEXT, **kw}
    with pytest.warns(UserWarning, match="RANDOM"):
        return evaluate_edit(files["before"], files[after], PROMPT, **kw)


def test_identical_after(files):
    report = run(files, "same")
    assert set(report) >= KEYS
    json.dumps(report)  # serialisable
    assert report["changed_inside"] == 0 and report["changed_outside"] == 0
    assert report["changed_outside_pixels"] == 0
    assert report["swd_ratio"] == pytest.approx(0, abs=1e-6)
    assert report["clip_similarity_edit"] == report["clip_similarity_input"]
    assert report["clip_score_edit"] == report["clip_score_input"]
    assert report["roi_pixels"] == 100
    assert report["outside_pixels"] == SIZE * SIZE - 100
    # ROI box + 16 px of context is 4..46: the 4 px strip left to the raster's edge (under half
    # the context) is taken in, as the editor reads it.
    assert report["window"] == [0, 0, 46, 46] and report["roi_bbox"] == [20, 20, 10, 10]
    assert report["clip"] == "tiny-random" and report["clip_random"] is True
    assert report["prompts"][0] == PROMPT and len(report["prompts"]) > 1
    assert report["georef_identical"] is True and report["png"] is None
    for key in ("clip_score_input", "clip_score_edit"):
        cos = report[key.replace("score", "similarity")]
        assert report[key] == pytest.approx(100 * max(cos, 0), abs=0.01)


def test_roi_changed(files):
    report = run(files, "inside", prompts=["water"])
    assert report["changed_inside"] == 1.0
    assert report["changed_outside"] == 0.0
    assert report["prompts"] == ["water"]
    assert report["swd_ratio"] > 0
    assert report["clip_similarity_edit"] != report["clip_similarity_input"]


def test_change_far_outside_the_window(files):
    report = run(files, "far")
    assert report["changed_inside"] == 0.0
    assert report["changed_outside_pixels"] == 1
    assert report["changed_outside"] == pytest.approx(1 / (SIZE * SIZE - 100))


def test_chunked_scan_counts_the_same(files, monkeypatch):
    """Tiny chunks: many strips, then pieces of single rows; the counts do not change."""
    before = evaluate.inspect_raster(files["before"])
    window = evaluate.Window(4, 4, 42, 42)
    inside = np.zeros((42, 42), bool)
    inside[16:26, 16:26] = True
    expected = {"inside": 0, "far": 1, "same": 0}
    for budget in (3 * SIZE * 7, 3 * 50, 3):
        monkeypatch.setattr(evaluate, "CHUNK_BYTES", budget)
        for name, count in expected.items():
            after = evaluate.inspect_raster(files[name])
            assert evaluate.changed_outside(before, after, window, inside) == count
        # And the ROI itself does count once the inside mask leaves it out.
        after = evaluate.inspect_raster(files["inside"])
        assert evaluate.changed_outside(before, after, window, np.zeros_like(inside)) == 100


def test_nodata_and_nan_compare_equal(tmp_path):
    data = random_data("float32", 2, 32, 32)
    data[:, :4, :4] = np.nan
    data[:, 4:8, :4] = -9999
    before = write_raster(tmp_path / "a.tif", data, nodata=-9999)
    after = write_raster(tmp_path / "b.tif", data.copy(), nodata=-9999)
    with pytest.warns(UserWarning):
        report = evaluate_edit(before, after, PROMPT, clip="tiny-random")
    assert report["changed_inside"] == 0 and report["changed_outside_pixels"] == 0
    assert report["roi_pixels"] == 32 * 32 and report["outside_pixels"] == 0


@pytest.mark.parametrize(
    ("after", "needle"), [("shifted", "geotransform"), ("small", "60x60"), ("mask", "bands")]
)
def test_other_grid_is_bad_input(files, after, needle):
    with pytest.raises(InputError, match=needle):
        evaluate_edit(files["before"], files[after], PROMPT, clip="tiny-random")


def test_bad_prompt_is_bad_input(files):
    with pytest.raises(InputError, match="prompt"):
        evaluate_edit(files["before"], files["same"], "  ", clip="tiny-random")


def test_png_written(files):
    png = files["folder"] / "quick.png"
    report = run(files, "inside", png=png)
    assert report["png"] == str(png)
    with Image.open(png) as img:
        img.load()
        # The 46 px window is enlarged 6x (the smallest integer factor reaching 256 px).
        assert img.size == (2 * 46 * 6 + evaluate.QUICKLOOK_GAP, 46 * 6)
        pixels = np.asarray(img.convert("RGB"))
    yellow = (pixels == evaluate.ROI_OUTLINE).all(-1)
    assert yellow[:, : 46 * 6].any() and yellow[:, 46 * 6 + evaluate.QUICKLOOK_GAP :].any()


def test_png_polygon_roi(tmp_path):
    data = random_data("uint8", 3, 40, 40)
    before = write_raster(tmp_path / "a.tif", data)
    ring = [[500100, 5499900], [500200, 5499900], [500200, 5499800], [500100, 5499800]]
    roi = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
        "properties": {},
        "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
    }
    png = tmp_path / "q.png"
    with pytest.warns(UserWarning):
        report = evaluate_edit(before, before, PROMPT, roi_geojson=roi, clip="tiny-random", png=png)
    assert report["roi_pixels"] == 100 and report["roi_bbox"] == [10, 10, 10, 10]
    with Image.open(png) as img:
        assert img.size == (2 * 40 * 7 + evaluate.QUICKLOOK_GAP, 40 * 7)


def test_quicklook_stretches_uint16(tmp_path):
    rng = np.random.default_rng(0)
    before = rng.integers(1000, 3000, size=(3, 300, 20)).astype(np.uint16)
    mask = np.zeros((300, 20), bool)
    mask[100:200, 5:15] = True
    png = quicklook_png(before, before, mask, tmp_path / "q.png")
    with Image.open(png) as img:
        assert img.size == (2 * 20 + evaluate.QUICKLOOK_GAP, 300)  # tall enough: not enlarged
        pixels = np.asarray(img.convert("RGB"))[:, :20].astype(int)
    assert pixels.min() == 0 and pixels.max() == 255  # stretched, not all black
    assert 60 < pixels.mean() < 200


def test_uint16_four_bands_with_rgb_bands(tmp_path):
    data = random_data("uint16", 4, 40, 40)
    after = data.copy()
    after[:, 10:20, 10:20] = 0
    mask = np.zeros((1, 40, 40), np.uint8)
    mask[0, 10:20, 10:20] = 1
    a = write_raster(tmp_path / "a.tif", data)
    b = write_raster(tmp_path / "b.tif", after)
    m = write_raster(tmp_path / "m.tif", mask)
    png = tmp_path / "q.png"
    with pytest.warns(UserWarning):
        report = evaluate_edit(
            a, b, PROMPT, mask_path=m, clip="tiny-random", rgb_bands=(4, 3, 2), png=png
        )
    assert report["changed_inside"] == 1.0 and report["changed_outside"] == 0.0
    assert math.isfinite(report["clip_similarity_edit"]) and report["swd_ratio"] > 0
    with Image.open(png) as img:
        assert img.size == (2 * 40 * 7 + evaluate.QUICKLOOK_GAP, 40 * 7)
    with pytest.raises(InputError, match="RGB band 5"):
        evaluate_edit(a, b, PROMPT, mask_path=m, clip="tiny-random", rgb_bands=(5, 3, 2))


def test_cli_eval_prints_json(files, capsys):
    png = files["folder"] / "cli.png"
    argv = ["eval", str(files["before"]), str(files["inside"]), "--prompt", PROMPT]
    argv += ["--mask", str(files["mask"]), "--clip", "tiny-random", "--device", "cpu"]
    argv += ["--rgb-bands", "3,2,1", "--png", str(png)]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err.count("RANDOM weights") == 1  # said once, as a log line, not a Python warning
    report = json.loads(out)
    assert set(report) >= KEYS
    assert report["changed_inside"] == 1.0 and report["changed_outside"] == 0.0
    assert report["png"] == str(png) and png.is_file()


def test_cli_eval_bad_input(files, capsys):
    argv = ["eval", str(files["before"]), str(files["small"]), "--prompt", PROMPT]
    code = main([*argv, "--clip", "tiny-random"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "not an edit of this input" in err


def test_cli_edit_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RS_EDIT_CACHE_DIR", str(tmp_path / "cache"))
    data = random_data("uint8", 3, 48, 48, seed=2)
    image = write_raster(tmp_path / "in.tif", data)
    mask = np.zeros((1, 48, 48), np.uint8)
    mask[0, 18:30, 18:30] = 1
    mask_path = write_raster(tmp_path / "mask.tif", mask)
    out = tmp_path / "out.tif"
    argv = ["edit", str(image), "-o", str(out), "--prompt", PROMPT, "--mask", str(mask_path)]
    argv += ["--preset", "tiny", "--clip", "tiny-random", "--seed", "1", "--quiet", "--report"]
    argv += ["--no-cache", "--device", "cpu"]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err.count("RANDOM weights") == 1  # --quiet: as one warning line
    assert captured.out.strip() == str(out)
    report = json.loads((tmp_path / "out_report.json").read_text())
    assert set(report) >= KEYS
    assert report["changed_outside"] == 0.0 and report["roi_pixels"] == 144
    assert report["prompts"] == report["edit"]["prompts"]
    assert report["png"] == str(tmp_path / "out_quicklook.png")
    with Image.open(tmp_path / "out_quicklook.png") as img:
        assert img.size == (2 * 48 * 6 + evaluate.QUICKLOOK_GAP, 48 * 6)
