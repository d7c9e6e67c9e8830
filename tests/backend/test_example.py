"""The example image: ground sample distance on the ground, band matching, sizes, radiometry,
and the example's share of the patch pools."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import write_raster
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from rs_edit.bands import BandScaling
from rs_edit.engine.patches import example_share
from rs_edit.errors import ParameterError
from rs_edit.example import ground_sample_distance, plan_example, read_example
from rs_edit.raster import inspect_raster


def _raster(tmp_path, name, data, crs="EPSG:32633", res=10.0, origin=(500000, 5000000), **kw):
    return write_raster(
        tmp_path / name, data, crs=crs, transform=from_origin(*origin, res, res), **kw
    )


def test_ground_sample_distance_is_measured_on_the_ground(tmp_path):
    data = np.zeros((1, 20, 20), np.uint8)
    utm = inspect_raster(_raster(tmp_path, "utm.tif", data))
    assert ground_sample_distance(utm) == pytest.approx(10.0, rel=0.01)
    # Web Mercator at 60 degrees north: a nominal 10 m is 5 m on the ground.
    y60 = 8399737.89  # EPSG:3857 northing of 60 N
    merc = inspect_raster(_raster(tmp_path, "m.tif", data, crs="EPSG:3857", origin=(0, y60)))
    assert ground_sample_distance(merc) == pytest.approx(5.0, rel=0.02)
    deg = inspect_raster(
        _raster(tmp_path, "d.tif", data, crs="EPSG:4326", res=0.0001, origin=(10, 45))
    )
    assert 7.0 < ground_sample_distance(deg) < 11.2  # 7.9 m across x 11.1 m down at 45 N


def test_an_example_is_resampled_to_the_tiles_resolution(tmp_path):
    tile = inspect_raster(_raster(tmp_path, "t.tif", np.zeros((3, 40, 40), np.uint8)))
    coarse = _raster(tmp_path, "e.tif", np.zeros((3, 30, 20), np.uint8), res=20.0)
    plan = plan_example(coarse, tile)
    assert plan.size == (60, 40) and plan.scale == pytest.approx(2.0, rel=0.01)
    small = _raster(tmp_path, "s.tif", np.zeros((3, 10, 10), np.uint8), res=5.0)
    with pytest.raises(ParameterError, match="only 5x5 px"):
        plan_example(small, tile)


def test_bands_match_by_count_or_by_colour(tmp_path):
    rgb = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    bgr = (ColorInterp.blue, ColorInterp.green, ColorInterp.red)
    tile = inspect_raster(
        _raster(tmp_path, "t.tif", np.zeros((3, 20, 20), np.uint8), colorinterp=bgr)
    )
    rgba = _raster(
        tmp_path, "e.tif", np.zeros((4, 20, 20), np.uint8),
        colorinterp=(*rgb, ColorInterp.undefined),
    )  # fmt: skip
    # The tile's first band is blue: it takes the example's blue (its third band).
    assert plan_example(rgba, tile, rgb=(2, 1, 0)).bands == (2, 1, 0)
    grey = inspect_raster(_raster(tmp_path, "g.tif", np.zeros((1, 20, 20), np.uint8)))
    with pytest.raises(ParameterError, match="has 4 data band"):
        plan_example(rgba, grey)


def test_example_polygons_outside_it_are_refused(tmp_path):
    tile = inspect_raster(_raster(tmp_path, "t.tif", np.zeros((3, 20, 20), np.uint8)))
    example = _raster(tmp_path, "e.tif", np.zeros((3, 20, 20), np.uint8))
    far = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}
    with pytest.raises(ValueError, match="example polygons"):
        plan_example(example, tile, roi_geojson=far)


def test_the_examples_radiometry_is_matched_to_the_tile(tmp_path):
    rng = np.random.default_rng(0)
    tile_data = (60 + rng.integers(0, 40, (3, 32, 32))).astype(np.uint8)
    bright = (150 + rng.integers(0, 80, (3, 32, 32))).astype(np.uint8)  # another exposure
    tile = inspect_raster(_raster(tmp_path, "t.tif", tile_data))
    scaling = BandScaling(lo=(0.0,) * 3, hi=(255.0,) * 3, dtype="uint8")
    model = scaling.forward(tile_data)
    plan = plan_example(_raster(tmp_path, "e.tif", bright), tile)
    as_is = read_example(plan, scaling)
    matched = read_example(plan, scaling, (model, np.ones((32, 32), bool)))
    gap = lambda e: np.abs(e.image.mean((1, 2)) - model.mean((1, 2))).max()  # noqa: E731
    assert gap(as_is) > 0.5 and gap(matched) < 0.05


def test_an_example_from_the_tiles_own_raster_keeps_its_colours(tmp_path):
    """Radiometry is matched scene to scene: an example cut from the tile's own raster is
    taken as it is, however unlike the window around the ROI (matched to that window, a
    patch of sea beside a window of land came out brown)."""
    import json

    from rs_edit.edit import EditOptions, prepare

    rng = np.random.default_rng(0)
    data = np.empty((3, 160, 400), dtype=np.uint8)
    sea, land = (30, 50, 90), (110, 120, 60)
    for k in range(3):
        data[k, :, :200] = sea[k] + rng.integers(0, 10, (160, 200))
        data[k, :, 200:] = land[k] + rng.integers(0, 10, (160, 200))
    data[:, ::9, 201::9] = 0  # dark and bright specks: the window's range holds the sea's
    data[:, 4::9, 205::9] = 255
    path = _raster(tmp_path, "scene.tif", data)

    def box(row0, col0, row1, col1):  # pixel box -> GeoJSON in the raster's CRS (10 m px)
        x0, x1, y0, y1 = 500000 + 10 * col0, 500000 + 10 * col1, 5e6 - 10 * row0, 5e6 - 10 * row1
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        return {"type": "Feature", "properties": {},
                "geometry": {"type": "Polygon", "coordinates": [ring]}}  # fmt: skip

    for name, feature in (("roi", box(60, 320, 100, 360)), ("sea", box(40, 40, 120, 120))):
        collection = {"type": "FeatureCollection", "features": [feature],
                      "crs": {"type": "name", "properties": {"name": "EPSG:32633"}}}  # fmt: skip
        (tmp_path / f"{name}.geojson").write_text(json.dumps(collection))
    options = EditOptions(
        prompt="x", reference=str(path), reference_roi=str(tmp_path / "sea.geojson"),
        reference_weight=1.0,
    )  # fmt: skip
    tile = prepare(path, options, roi_geojson=tmp_path / "roi.geojson")
    assert tile.window.col_off >= 200  # the window holds land only
    example = tile.example.image[:, tile.example.valid].mean(1)
    as_read = tile.scaling.forward(data[:, 40:120, 40:120]).reshape(3, -1).mean(1)
    assert np.abs(example - as_read).max() < 0.02, (example, as_read)


def test_the_examples_share_rises_from_the_rois_edge():
    roi = torch.zeros(1, 1, 21, 21, dtype=torch.bool)
    roi[..., 2:19, 2:19] = True
    share = example_share(roi, 1, 0.8, 3).view(21, 21)
    assert share[0, 0] == 0 and share[10, 10] == pytest.approx(0.8)
    assert 0 < share[2, 10] < share[3, 10] < share[10, 10]


def test_the_examples_ramp_fits_a_small_roi():
    """The share's ramp is at most half the ROI's depth: in a small ROI a fixed ramp left
    the example at full share only at the very centre."""
    from rs_edit.engine.patches import fitted_ramp
    from rs_edit.engine.presets import PRESETS
    from rs_edit.guidance.editor import _ExamplePool

    def box(side, size=64):
        roi = torch.zeros(1, 1, size, size, dtype=torch.bool)
        roi[..., 4 : 4 + side, 4 : 4 + side] = True
        return roi

    assert fitted_ramp(box(40), 5) == 5  # deep enough: the ramp as asked
    assert fitted_ramp(box(12), 5) == 3  # 6 px deep
    assert fitted_ramp(box(7), 5) == 2
    assert fitted_ramp(box(2), 5) == 1 and fitted_ramp(box(40), 1) == 1  # at least 1
    corner = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    corner[..., :10, :10] = True  # the image's border is not outside
    assert fitted_ramp(corner, 5) == 5

    preset = PRESETS["fast"]
    example = SimpleNamespace(
        image=np.zeros((3, 32, 32), np.float32), valid=np.ones((32, 32), bool)
    )

    def pool_for(side):  # a 256 px window: the coarse scale is a quarter of it
        alpha = np.zeros((256, 256), np.float32)
        alpha[40 : 40 + side, 40 : 40 + side] = 1.0
        tile = SimpleNamespace(example=example, model_image=np.zeros((3, 256, 256)), alpha=alpha)
        return _ExamplePool.of(tile, 1.0, preset)

    assert pool_for(160).ramp == preset.sampler.example_ramp
    assert pool_for(40).ramp == 2  # 10 px at the coarse scale: 5 deep


def test_the_result_tags_name_example_files_never_their_paths(tmp_path):
    from rs_edit.edit import EditOptions, result_settings

    example = _raster(tmp_path, "e.tif", np.zeros((3, 20, 20), np.uint8))
    geojson_text = '{"type": "Polygon", "coordinates": [[' + "[0, 0], " * 200 + "[0, 0]]]}"
    settings = result_settings(
        EditOptions(prompt="x", reference=str(example), reference_roi=geojson_text)
    )
    assert settings["reference"] == "e.tif" and settings["reference_roi"] is True


def test_the_example_is_read_once_however_many_windows(tmp_path, monkeypatch):
    """Far-apart polygons split the edit into windows; the example file is read once, and each
    window gets it in its own model range."""
    import json

    import rasterio.io

    from rs_edit.edit import EditOptions, read_plan
    from rs_edit.plan import plan_edit

    rng = np.random.default_rng(1)
    tile = _raster(tmp_path, "t.tif", rng.integers(0, 255, (3, 200, 200), dtype=np.uint8))
    example = _raster(tmp_path, "e.tif", rng.integers(0, 255, (3, 40, 40), dtype=np.uint8))
    x0, y0 = 500000, 5000000
    rings = [
        [[x0 + c * 10, y0 - r * 10], [x0 + (c + 10) * 10, y0 - r * 10],
         [x0 + (c + 10) * 10, y0 - (r + 10) * 10], [x0 + c * 10, y0 - (r + 10) * 10],
         [x0 + c * 10, y0 - r * 10]]
        for c, r in ((5, 5), (180, 180))
    ]  # fmt: skip
    roi = {
        "type": "Feature",
        "properties": {},
        "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
        "geometry": {"type": "MultiPolygon", "coordinates": [[ring] for ring in rings]},
    }
    reads: list[str] = []
    original = rasterio.io.DatasetReader.read

    def counted(self, *args, **kwargs):
        reads.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", counted)
    options = EditOptions(prompt="x", context_px=16, reference=str(example))
    plan = plan_edit(tile, options, roi_geojson=json.dumps(roi))
    tiles = read_plan(plan)
    assert len(tiles) == 2 and all(t.example is not None for t in tiles)
    # one read of the example's window and one of its whole scene (radiometry)
    assert sum(name == str(example) for name in reads) == 2


def test_an_example_shares_the_searchs_key_budget(monkeypatch):
    """With an example the tile's and the example's keys share `max_keys`: an edit by example
    searches no more keys per query than one without."""
    from rs_edit.engine import patches

    seen: list[int] = []
    original = patches._nearest

    def counted(queries, keys, *args, **kwargs):
        seen.append(len(keys))
        return original(queries, keys, *args, **kwargs)

    monkeypatch.setattr(patches, "_nearest", counted)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 96, 96, generator=gen) * 2 - 1
    mask = torch.zeros(1, 1, 96, 96, dtype=torch.bool)
    mask[..., 30:70, 30:70] = True
    example = torch.rand(1, 3, 96, 96, generator=gen) * 2 - 1
    settings = patches.PatchSettings(max_keys=2000)
    coarse = patches.resize(image, (48, 48))
    patches.refine(coarse, image, mask, settings)
    plain = max(seen)
    seen.clear()
    patches.refine(
        coarse, image, mask, settings,
        example=(example, torch.zeros(1, 1, 96, 96, dtype=torch.bool)), example_weight=0.8,
    )  # fmt: skip
    assert plain == 2000 and max(seen) <= 2000


def test_the_guard_mixes_the_example_by_the_share_it_was_given():
    from rs_edit.guidance.editor import _ExamplePool

    pool = _ExamplePool(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8, dtype=torch.bool), 0.8)
    roi = torch.zeros(40, 40, dtype=torch.bool)
    roi[5:35, 5:35] = True
    assert pool.mean_share(roi, 1) == pytest.approx(0.8)
    ramped = pool.mean_share(roi, 4)
    assert 0.5 < ramped < 0.8  # the rim holds less of the example
    assert pool.mean_share(roi, 10) < ramped


def test_the_sampler_searches_no_more_keys_with_an_example(monkeypatch):
    from rs_edit.engine import patch_diffusion

    seen: list[int] = []
    original = patch_diffusion._denoise

    def counted(queries, keys, *args, **kwargs):
        seen.append(len(keys))
        return original(queries, keys, *args, **kwargs)

    monkeypatch.setattr(patch_diffusion, "_denoise", counted)
    gen = torch.Generator().manual_seed(0)
    known = torch.rand(1, 3, 40, 40, generator=gen) * 2 - 1
    roi = torch.zeros(1, 1, 40, 40, dtype=torch.bool)
    roi[..., 12:28, 12:28] = True
    settings = patch_diffusion.PatchDiffusionSettings(steps=3)
    patch_diffusion.sample(known, roi, settings, seed=0)
    plain = max(seen)
    seen.clear()
    example = (torch.rand(1, 3, 40, 40, generator=gen), torch.zeros(1, 1, 40, 40, dtype=torch.bool))
    out = patch_diffusion.sample(known, roi, settings, seed=0, example=example, example_weight=1.0)
    assert max(seen) <= plain and torch.equal(
        out[~roi.expand_as(out)], known[~roi.expand_as(known)]
    )


def test_the_guard_measures_an_example_edit_in_the_mixtures_own_unit():
    from rs_edit.engine.quality import roi_swd_unit
    from rs_edit.guidance.editor import _ExamplePool, _mixture_unit

    gen = torch.Generator().manual_seed(0)
    tile_unit = [0.1, 0.2, 0.3, 0.4, 0.5]
    roi = torch.zeros(64, 64, dtype=torch.bool)
    roi[10:40, 10:40] = True
    # A varied example: flat water on the left, rough fields on the right.
    varied = torch.full((1, 3, 80, 80), -0.6)
    varied[..., 40:] = 0.4 + 0.3 * torch.rand(1, 3, 80, 40, generator=gen)
    pool = _ExamplePool(varied, torch.zeros(1, 1, 80, 80, dtype=torch.bool), 1.0)
    own = roi_swd_unit(varied[0], roi)
    # Where the example has too few patches for a level (NaN), the tile's unit stands.
    own = [t if o != o else o for t, o in zip(tile_unit, own, strict=True)]
    assert own != tile_unit
    assert _mixture_unit(tile_unit, pool, roi, 0.0) == pytest.approx(tile_unit)
    assert _mixture_unit(tile_unit, pool, roi, 1.0) == pytest.approx(own)
    half = _mixture_unit(tile_unit, pool, roi, 0.5)
    assert half == pytest.approx([(t + o) / 2 for t, o in zip(tile_unit, own, strict=True)])
    # A region of a varied example is far from the rest of it: its unit is the larger.
    assert own[0] > 2 * tile_unit[0]

    # An example smaller than the ROI's shape, or with too few valid pixels for it: the tile's.
    tiny = _ExamplePool(varied[..., :20, :20], torch.zeros(1, 1, 20, 20, dtype=torch.bool), 1.0)
    assert _mixture_unit(tile_unit, tiny, roi, 0.8) == tile_unit
    holes = torch.ones(1, 1, 80, 80, dtype=torch.bool)
    holes[..., :20, :] = False
    sliver = _ExamplePool(varied, holes, 1.0)
    assert _mixture_unit(tile_unit, sliver, roi, 0.8) == tile_unit


def _two_part_example():
    """A tile of one texture, and an example half of that texture, half a bright other one."""
    from test_realism import texture

    tile = texture(0).numpy()
    example = texture(1).clone()
    example[:, :, 48:] = 0.3 * texture(2)[:, :, 48:] + torch.tensor([0.6, 0.5, -0.2])[:, None, None]
    roi = np.zeros((96, 96), dtype=bool)
    roi[28:68, 28:68] = True
    scene = SimpleNamespace(
        model_image=tile, roi_mask=roi, valid=np.ones((96, 96), dtype=bool),
        alpha=roi.astype(np.float32), scaling=BandScaling((0.0,) * 3, (255.0,) * 3, "uint8"),
    )  # fmt: skip
    like_tile = tile.copy()  # the example's half that looks like the tile
    like_tile[:, roi] = texture(1).numpy()[:, roi]
    like_example = tile.copy()  # both halves of the example
    like_example[:, roi] = example.numpy()[:, roi]
    return scene, example, like_tile, like_example


def test_the_guard_measures_how_far_an_edit_came_toward_the_example():
    from rs_edit.guidance.editor import _ExamplePool, _RealismScore

    scene, example, like_tile, like_example = _two_part_example()
    pool = _ExamplePool(example[None], torch.zeros(1, 1, 96, 96, dtype=torch.bool), 1.0)
    score = _RealismScore(scene, pool, 0.9)
    assert score(scene.model_image).toward == pytest.approx(1.0)  # the input itself
    kept_tile, took_example = score(like_tile).toward, score(like_example).toward
    assert kept_tile > 0.85 and took_example < kept_tile - 0.05, (kept_tile, took_example)
    assert _RealismScore(scene).__call__(like_example).toward == 0.0  # no example: not measured


def test_the_guard_redraws_an_edit_that_kept_the_tiles_look():
    """An edit by example whose ROI kept the tile's look (here: unchanged) passes every
    realism measure against the mixture, but did not do what was asked: the guard draws
    another, and keeps the one that took on the example."""
    from rs_edit.edit import EditOptions
    from rs_edit.guidance.editor import TextEditor, _ExamplePool

    scene, example, like_tile, like_example = _two_part_example()
    pool = _ExamplePool(example[None], torch.zeros(1, 1, 96, 96, dtype=torch.bool), 1.0)
    editor = TextEditor(EditOptions(prompt="x", preset="fast", clip="tiny-random"), device="cpu")
    assert editor.preset.guard_toward <= 0.6
    editor.preset = dataclasses.replace(editor.preset, sampler=dataclasses.replace(
        editor.preset.sampler, example_ramp=0))  # fmt: skip
    drawn = []

    def sampler(seeds, **kwargs):
        drawn.append(seeds[0])
        return [like_example]

    editor._add_detail = lambda tile, coarse, seeds, progress, example=None: coarse
    unchanged = scene.model_image.copy()
    edits, measured, replaced = editor._guard(
        scene, sampler, False, [unchanged], [1], lambda *a, **k: None, pool
    )
    assert replaced == [1] and np.array_equal(edits[0], like_example)
    assert measured[0].toward < 0.85 and len(drawn) >= 1

    # The same edit with the requirement off (a bar of 1: no closer than the input) is kept.
    editor.preset = dataclasses.replace(editor.preset, guard_toward=1.0)
    edits, _, replaced = editor._guard(
        scene, sampler, False, [unchanged], [1], lambda *a, **k: None, pool
    )
    assert replaced == [] and np.array_equal(edits[0], unchanged)
