"""`rs-edit augment`: chips, masks, edits, LEVIR-CD PNGs, manifest and resume.

The fast tests swap the diffusion editor for a stand-in (the raster path of `run_edit`, the
evaluation and every file are real); one test runs the real tiny model (tiny-random CLIP) on one
32 px sample (about 15 s on 2 idle CPU cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
from PIL import Image
from rasterio import features
from shapely.geometry import box, mapping

from rs_edit import cli
from rs_edit.augment import (
    MANIFEST_KEYS,
    AugmentOptions,
    Feature,
    load_manifest,
    plan_chips,
    prompt_slugs,
    read_polygons,
    run_augment,
)
from rs_edit.errors import CancelledError, InputError, RoiError
from rs_edit.report import EditReport
from rs_edit.scene import make_scene, write_scene

PROMPTS = ["flooded fields", "burned forest"]
BOXES = [((5, 5, 20, 18), "major"), ((40, 40, 60, 55), "minor"), ((70, 75, 90, 92), "major")]


class FakeEditor:
    """Stands in for TextEditor: brightens the tile, reports like the real one."""

    def __init__(self, options, device=None, cache_dir=None, log=None):
        self.options = options
        self.report = EditReport()

    def edit(self, tile, progress):
        seed = self.options.seed or 0
        edited = np.clip(tile.model_image * 0.5 + 0.3 + 0.01 * seed, -1, 1).astype(np.float32)
        self.report = EditReport(
            seed=seed,
            clip="tiny-random",
            clip_random=True,
            prompts=[self.options.prompt, f"a satellite image of {self.options.prompt}"],
            model_cached=False,
            clip_similarity_input=0.0,
            clip_similarity_edits=[0.1],
        )
        return [edited]


@pytest.fixture
def fake_editor(monkeypatch):
    import rs_edit.guidance.editor as editor

    monkeypatch.setattr(editor, "TextEditor", FakeEditor)


def write_inputs(folder: Path) -> tuple[Path, Path, list, list[dict]]:
    """The 96 px scene, a GeoJSON of the BOXES (ids 1-3, a `damage` attribute) in FOLDER, the
    shapely boxes and the GeoJSON features."""
    scene = make_scene(96, seed=3)
    raster = folder / "scene.tif"
    write_scene(scene, raster)
    t = scene.transform
    polys = [
        box(t.c + c0 * t.a, t.f + r1 * t.e, t.c + c1 * t.a, t.f + r0 * t.e)
        for (c0, r0, c1, r1), _ in BOXES
    ]
    feats = [
        {"type": "Feature", "id": i, "properties": {"damage": d}, "geometry": mapping(p)}
        for i, (p, (_, d)) in enumerate(zip(polys, BOXES, strict=True), start=1)
    ]
    geojson = folder / "polygons.geojson"
    geojson.write_text(json.dumps(collection(feats)))
    return raster, geojson, polys, feats


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path, list]:
    raster, geojson, polys, _ = write_inputs(tmp_path_factory.mktemp("augment"))
    return raster, geojson, polys


def collection(feats: list) -> dict:
    crs = {"type": "name", "properties": {"name": "EPSG:32633"}}
    return {"type": "FeatureCollection", "crs": crs, "features": feats}


def options(**kw) -> AugmentOptions:
    base = dict(prompts=PROMPTS, variants=2, chip=48, preset="tiny", clip="tiny-random")
    return AugmentOptions(**{**base, "device": "cpu", **kw})


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_twelve_samples_on_one_grid(inputs, tmp_path, fake_editor):
    raster, geojson, polys = inputs
    out = tmp_path / "out"
    result = run_augment(raster, geojson, out, options())
    assert (result.total, result.made, result.skipped) == (12, 12, 0)
    lines = manifest(out)
    assert len(lines) == 12 and len({e["sample"] for e in lines}) == 12
    for entry in lines:
        assert set(MANIFEST_KEYS) <= set(entry)
        assert entry["crs"] == "EPSG:32633" and entry["clip"] == "tiny-random"
        assert entry["seed"] == entry["variant"] - 1 and len(entry["prompts"]) == 2
        assert entry["swd_ratio"] is not None and entry["clip_score"] is not None
        grids = []
        for key in ("pre", "post", "mask"):
            with rasterio.open(out / entry[key]) as src:
                grids.append((src.crs, src.transform, src.width, src.height))
                assert list(src.bounds) == entry["bounds"]
        assert grids[0] == grids[1] == grids[2] and grids[0][2:] == (48, 48)
        with rasterio.open(out / entry["mask"]) as src:
            mask = src.read(1)
            assert src.dtypes[0] == "uint8"
            poly = polys[int(entry["polygon_id"]) - 1]
            expected = features.rasterize([poly], out_shape=mask.shape, transform=src.transform)
        assert set(np.unique(mask)) == {0, 1} and np.array_equal(mask, expected)
        with rasterio.open(out / entry["pre"]) as a, rasterio.open(out / entry["post"]) as b:
            before, after = a.read(), b.read()
        assert np.array_equal(before[:, mask == 0], after[:, mask == 0])
        assert (before[:, mask == 1] != after[:, mask == 1]).any()
        pngs = [np.asarray(Image.open(out / entry[k])) for k in ("levircd_a", "levircd_b")]
        label = np.asarray(Image.open(out / entry["levircd_label"]))
        assert pngs[0].shape == pngs[1].shape == (48, 48, 3) and label.shape == (48, 48)
        assert set(np.unique(label)) <= {0, 255} and np.array_equal(label > 0, mask > 0)
        assert np.array_equal(pngs[0], np.moveaxis(before, 0, -1))  # uint8: no stretch
    # The chip is cut from the raster at its window, centred on the polygon (clipped inside).
    with rasterio.open(raster) as src, rasterio.open(out / "pre/2.tif") as chip:
        window = src.window(*chip.bounds)
        assert np.array_equal(src.read(window=window), chip.read())
        assert (window.col_off, window.row_off) == (26, 24)


def test_rerun_after_interruption_makes_only_what_is_missing(inputs, tmp_path, fake_editor):
    raster, geojson, _ = inputs
    out = tmp_path / "out"
    assert run_augment(raster, geojson, out, options(), limit=3).made == 3

    def stop_after_five(done, total):
        if done == 5:
            raise CancelledError("stop")

    with pytest.raises(CancelledError):
        run_augment(raster, geojson, out, options(), on_sample=stop_after_five)
    first = manifest(out)
    assert len(first) == 5
    times = {e["sample"]: [(out / e[k]).stat().st_mtime_ns for k in ("pre", "post")] for e in first}
    # A crash tore the manifest's last line, and one sample lost a file: both are redone.
    with open(out / "manifest.jsonl", "a") as f:
        f.write('{"sample": "torn')
    lost = first[-1]
    (out / lost["levircd_b"]).unlink()
    result = run_augment(raster, geojson, out, options())
    assert (result.made, result.skipped) == (8, 4)
    lines = manifest(out)
    names = [e["sample"] for e in lines]
    assert len(lines) == 12 and len(set(names)) == 12
    for entry in first[:4]:
        now = [(out / entry[k]).stat().st_mtime_ns for k in ("pre", "post")]
        assert now == times[entry["sample"]]
    assert len(load_manifest(out)) == 12
    assert run_augment(raster, geojson, out, options()).made == 0


def test_prompt_field_and_map(inputs, tmp_path, fake_editor):
    raster, geojson, _ = inputs
    out = tmp_path / "out"
    opts = options(
        prompts=(),
        prompt_field="damage",
        prompt_map={"major": "collapsed buildings with rubble"},
        variants=1,
    )
    run_augment(raster, geojson, out, opts)
    lines = manifest(out)
    assert sorted(e["polygon_id"] for e in lines) == ["1", "3"]
    assert {e["prompt"] for e in lines} == {"collapsed buildings with rubble"}


def test_geopackage_layer(inputs, tmp_path):
    raster, _, polys = inputs
    path = tmp_path / "p.gpkg"
    for layer, fids in (("roads", [1]), ("damage", [10, 11, 12])):
        pyogrio.raw.write(
            path,
            np.array([shapely.to_wkb(p) for p in polys[: len(fids)]], dtype=object),
            [np.array(fids), np.array(["major"] * len(fids), dtype=object)],
            ["fid", "level"],  # a field named like the FID column sets the feature ids
            layer=layer,
            geometry_type="Polygon",
            crs="EPSG:32633",
            append=path.exists(),
        )
    feats, crs = read_polygons(path, "damage")
    assert [f.id for f in feats] == ["10", "11", "12"] and crs.to_epsg() == 32633
    assert isinstance(feats[0], Feature)
    assert feats[1].geometry.equals(polys[1]) and feats[0].properties["level"] == "major"
    with pytest.raises(RoiError, match="no layer 'rivers'"):
        read_polygons(path, "rivers")
    with pytest.raises(RoiError, match="several layers"):
        plan_chips(raster, path, options())
    chips = plan_chips(raster, path, options(layer="damage"))
    assert [c.feature.id for c in chips] == ["10", "11", "12"]
    assert (chips[1].window.col_off, chips[1].window.row_off) == (26, 24)


def test_prompt_slugs_are_distinct():
    slugs = prompt_slugs(["Flood", "flood", "x" * 60])
    assert len(set(slugs.values())) == 3 and all(len(s) <= 47 for s in slugs.values())


@pytest.mark.parametrize("case", ["empty", "outside", "both_prompts"])
def test_bad_input(inputs, tmp_path, case, capsys, fake_editor):
    raster, geojson, _ = inputs
    bad = tmp_path / "bad.geojson"
    prompt_args = ["--prompt", "flooded fields"]
    opts = options(prompts=["flooded fields"])
    if case == "empty":
        bad.write_text(json.dumps(collection([])))
    elif case == "outside":
        far = box(600000, 5600000, 600100, 5600100)
        bad.write_text(json.dumps(collection([{"type": "Feature", "geometry": mapping(far)}])))
    else:
        bad = geojson
        prompt_args += ["--prompt-field", "damage"]
        opts = options(prompts=["flooded fields"], prompt_field="damage")
    with pytest.raises(InputError):
        run_augment(raster, bad, tmp_path / "o", opts)
    argv = ["augment", str(raster), "--polygons", str(bad), *prompt_args, "-o", str(tmp_path / "o")]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "o" / "manifest.jsonl").exists()


def test_cli_runs(inputs, tmp_path, fake_editor, capsys):
    raster, geojson, _ = inputs
    out = tmp_path / "out"
    argv = ["augment", str(raster), "--polygons", str(geojson), "--prompt", "flooded fields"]
    argv += ["--chip", "48", "--preset", "tiny", "--clip", "tiny-random", "--seed", "4"]
    argv += ["--device", "cpu", "--quiet", "-o", str(out)]
    assert cli.main(argv) == 0
    lines = manifest(out)
    assert len(lines) == 3 and {e["seed"] for e in lines} == {4}


def test_real_edit_one_sample(inputs, tmp_path, trained_tiny):
    raster, geojson, _ = inputs
    out = tmp_path / "out"
    feats = json.loads(geojson.read_text())
    feats["features"] = feats["features"][1:2]
    one = tmp_path / "one.geojson"
    one.write_text(json.dumps(feats))
    run_augment(raster, one, out, options(prompts=["flooded fields"], variants=1, chip=32))
    (entry,) = manifest(out)
    assert entry["clip_random"] is True and entry["width"] == 32
    assert (out / ".cache" / "models").is_dir()
