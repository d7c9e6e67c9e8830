"""One edit plan (issue 13): `plan_edit` resolves an edit's inputs and windows without reading a
pixel, `read_plan` reads exactly the planned windows, and the CLI, the service and the memory
estimate all go through it."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import rasterio
import rasterio.io
from conftest import ORIGIN, random_data, write_raster
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from rs_edit import plan as plan_module
from rs_edit import raster
from rs_edit.edit import EditOptions, prepare, prepare_windows, read_plan
from rs_edit.errors import ParameterError, RasterError, RoiError
from rs_edit.memory import check_edit, estimate_edit, estimate_mb
from rs_edit.plan import EditPlan, WindowTooLargeError, plan_edit
from rs_edit.roi import context_window
from rs_edit.service.config import Limits
from rs_edit.service.errors import LimitError
from rs_edit.service.submit import validate_inputs

RGB = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
PIXEL = 10  # the conftest grid: 10 m pixels from ORIGIN


def scene(path, size: int = 256, **kw):
    """An uncompressed RGB GeoTIFF (nothing for `inspect_raster` to decode)."""
    return write_raster(path, random_data("uint8", 3, size, size), colorinterp=RGB, **kw)


def squares(corners: list[tuple[int, int]], side: int) -> dict:
    """Squares of `side` px with top-left pixel corners (col, row), as GeoJSON in the grid's CRS."""
    x0, y0 = ORIGIN
    features = []
    for col, row in corners:
        left, top = x0 + col * PIXEL, y0 - row * PIXEL
        right, bottom = left + side * PIXEL, top - side * PIXEL
        ring = [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]]
        features.append(
            {"type": "Feature", "properties": {},
             "geometry": {"type": "Polygon", "coordinates": [ring]}}
        )  # fmt: skip
    return {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
        "features": features,
    }


def options(**kw) -> EditOptions:
    return EditOptions(**{"prompt": "flooded", "context_px": 16, **kw})


@pytest.fixture
def pixel_reads(monkeypatch) -> list[str]:
    """Every pixel or mask read through rasterio's dataset reader, by name."""
    calls: list[str] = []
    for name in ("read", "read_masks"):
        original = getattr(rasterio.io.DatasetReader, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(rasterio.io.DatasetReader, name, counted)
    return calls


# --- no pixels --------------------------------------------------------------------------------


def test_plan_reads_no_pixels_and_read_plan_does(tmp_path, pixel_reads):
    path = scene(tmp_path / "scene.tif")
    roi = squares([(10, 10), (200, 200)], 20)
    plan = plan_edit(path, options(), roi_geojson=roi)
    assert pixel_reads == []
    assert len(plan.windows) == 2
    tiles = read_plan(plan)
    assert "read" in pixel_reads  # the counter sees reads: the plan's silence means none
    assert len(tiles) == 2


def test_plan_works_on_a_raster_whose_pixels_do_not_decode(tmp_path, monkeypatch):
    """A DEFLATE GeoTIFF with a corrupt block and a sound header: planned, then refused at the
    read. (`inspect_raster` decodes rasters of up to 64 MB; the limit is lowered so that this
    tiny one is treated as a large one, whose blocks are not decoded.)"""
    path = scene(tmp_path / "corrupt.tif", compress="deflate", tiled=True, blockxsize=256)
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 64)  # the zlib header and the start of the stream
    monkeypatch.setattr(raster, "_HEAVY_READ_LIMIT", 0)
    plan = plan_edit(path, options())
    assert plan.sizes == [(256, 256)]
    with pytest.raises(RasterError, match="cannot read pixels"):
        read_plan(plan)


# --- windows ----------------------------------------------------------------------------------


def test_far_apart_polygons_get_windows_of_their_own_and_near_ones_share_one(tmp_path):
    path = scene(tmp_path / "scene.tif")
    far = plan_edit(path, options(), roi_geojson=squares([(30, 30), (200, 200), (200, 30)], 20))
    assert len(far.windows) == 3
    # each window: its square (20 px) and 16 px of context on every side, clipped to the raster
    assert sorted(far.sizes) == [(52, 52)] * 3
    for planned in far.windows:
        assert planned.window == context_window(planned.roi.bbox, far.info, 16)
    near = plan_edit(path, options(), roi_geojson=squares([(10, 10), (40, 10)], 20))
    assert len(near.windows) == 1
    (only,) = near.windows
    assert only.roi is near.roi
    assert only.window == Window(0, 0, 60 + 16, 30 + 16)  # the pair's box and context, clipped


def test_a_window_close_to_the_raster_edge_takes_the_strip_left_over(tmp_path, monkeypatch):
    """Less than half the context left between the window and the raster's edge: the window
    goes to the edge (the editor and its realism guard see that context too); farther away,
    or when it would make the window too large, it does not."""
    import rs_edit.plan as plan_module

    path = scene(tmp_path / "scene.tif")  # 256 x 256, context 16: snap within 8 px
    near_edge = plan_edit(path, options(), roi_geojson=squares([(22, 100)], 20))
    # cols 22-42 grown by 16: 6-58, 6 px from the left edge -> 0; rows 84-136 stay
    assert near_edge.windows[0].window == Window(0, 84, 58, 52)
    assert near_edge.windows[0].window == context_window(
        near_edge.roi.bbox, near_edge.info, 16, snap_px=8
    )
    far_from_edge = plan_edit(path, options(), roi_geojson=squares([(26, 100)], 20))
    assert far_from_edge.windows[0].window == Window(10, 84, 52, 52)  # 10 px > 8: kept
    monkeypatch.setattr(plan_module, "MAX_WINDOW_PIXELS", 58 * 52 - 1)
    too_large = plan_edit(path, options(), roi_geojson=squares([(22, 100)], 20))
    assert too_large.windows[0].window == Window(6, 84, 52, 52)


def test_dilation_counts_as_context(tmp_path):
    path = scene(tmp_path / "scene.tif")
    roi = squares([(100, 100)], 20)
    plan = plan_edit(path, options(context_px=16, dilate_px=4), roi_geojson=roi)
    assert plan.sizes == [(20 + 2 * 20, 20 + 2 * 20)]


def test_split_false_gives_one_window_around_the_whole_roi(tmp_path):
    path = scene(tmp_path / "scene.tif")
    roi = squares([(10, 10), (200, 200)], 20)
    plan = plan_edit(path, options(), roi_geojson=roi, split=False)
    assert len(plan.windows) == 1
    assert plan.windows[0].roi is plan.roi
    assert plan.windows[0].window == Window(0, 0, 236, 236)
    assert plan.windows[0].window == context_window(plan.roi.bbox, plan.info, 16)


def test_whole_image_and_mask_are_one_window(tmp_path):
    path = scene(tmp_path / "scene.tif")
    assert plan_edit(path, options()).sizes == [(256, 256)]
    mask = np.zeros((1, 256, 256), np.uint8)
    mask[0, 10:30, 10:30] = mask[0, 200:220, 200:220] = 1
    mask_path = write_raster(tmp_path / "mask.tif", mask)
    plan = plan_edit(path, options(), mask_path=mask_path)  # a mask raster stays one group
    assert plan.sizes == [(236, 236)]


def test_read_plan_reads_the_planned_windows(tmp_path):
    path = scene(tmp_path / "scene.tif")
    roi = squares([(10, 10), (200, 200), (40, 180)], 20)
    plan = plan_edit(path, options(), roi_geojson=roi)
    tiles = read_plan(plan)
    assert [t.window for t in tiles] == [w.window for w in plan.windows]
    for tile, planned in zip(tiles, plan.windows, strict=True):
        assert tile.roi is planned.roi
        assert tile.model_image.shape[1:] == planned.size
        assert tile.roi_mask.sum() == 20 * 20
        assert tile.rgb == plan.rgb and tile.options == plan.options and tile.info == plan.info
    # the wrappers read the same windows
    assert [t.window for t in prepare_windows(path, options(), roi_geojson=roi)] == [
        w.window for w in plan.windows
    ]
    whole = plan_edit(path, options(), roi_geojson=roi, split=False)
    assert prepare(path, options(), roi_geojson=roi).window == whole.windows[0].window


def test_the_plan_holds_validated_options_and_the_band_choice(tmp_path):
    path = scene(tmp_path / "scene.tif")
    plan = plan_edit(path, options(prompt="  a   flooded  field ", rgb_bands=(3, 2, 1)))
    assert isinstance(plan, EditPlan)
    assert plan.options.prompt == "a flooded field"
    assert plan.rgb == (2, 1, 0)
    assert plan.info.width == plan.info.height == 256


# --- the same errors as before -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"prompt": "  "}, ParameterError, "prompt is empty"),
        ({"variants": 0}, ParameterError, "variants must be between 1 and 16, got 0"),
        ({"rgb_bands": (1, 2)}, ParameterError, "give 1 or 3 RGB bands, got 2"),
        (
            {"rgb_bands": (4,)},
            ParameterError,
            "RGB band 4 is not a data band of this raster (data bands: 1, 2, 3)",
        ),
    ],
)
def test_bad_options_raise_as_before(tmp_path, kw, error, message):
    path = scene(tmp_path / "scene.tif", size=64)
    for make in (plan_edit, prepare, prepare_windows):
        with pytest.raises(error) as info:
            make(path, options(**kw))
        assert str(info.value) == message


def test_bad_inputs_raise_as_before(tmp_path):
    path = scene(tmp_path / "scene.tif", size=64)
    with pytest.raises(RasterError, match="input raster not found"):
        plan_edit(tmp_path / "missing.tif", options())
    both = {"roi_geojson": squares([(1, 1)], 8), "mask_path": path}
    with pytest.raises(ParameterError) as info:
        plan_edit(path, options(), **both)
    assert str(info.value) == "give either a GeoJSON ROI or a mask raster, not both"
    with pytest.raises(RoiError):
        plan_edit(path, options(), roi_geojson=squares([(1000, 1000)], 8))  # off the raster


def test_a_window_over_the_limit_is_refused_with_the_same_message(tmp_path, monkeypatch):
    path = scene(tmp_path / "scene.tif", size=64)
    monkeypatch.setattr(plan_module, "MAX_WINDOW_PIXELS", 1000)
    expected = (
        "the area to edit (64x64 px with context) is larger than 1,000 px: "
        "draw a smaller ROI (--roi or --mask)"
    )
    for make in (plan_edit, prepare, prepare_windows):
        with pytest.raises(WindowTooLargeError) as info:
            make(path, options())
        assert isinstance(info.value, ParameterError)
        assert str(info.value) == expected
        assert info.value.window == Window(0, 0, 64, 64)
    # it crosses the job process's pipe pickled
    back = pickle.loads(pickle.dumps(info.value))
    assert str(back) == expected and back.window == Window(0, 0, 64, 64) and back.limit == 1000
    # split windows are each within the limit: far-apart squares are planned
    roi = squares([(0, 0), (50, 50)], 4)
    split = plan_edit(path, options(context_px=4), roi_geojson=roi)
    assert sorted(split.sizes) == [(8, 8), (12, 12)]


# --- the plan's users ---------------------------------------------------------------------------


def test_the_memory_estimate_is_of_the_planned_windows(tmp_path):
    path = scene(tmp_path / "scene.tif")
    plan = plan_edit(path, options(preset="tiny"), roi_geojson=squares([(30, 30), (200, 200)], 20))
    windows, estimate = estimate_edit(plan)
    assert windows == plan.sizes == [(52, 52), (52, 52)]
    assert estimate == estimate_mb(windows, bands=3, preset="tiny", clip=plan.options.clip)
    assert check_edit(plan, estimate) == estimate


def test_the_service_checks_the_planned_windows(tmp_path, monkeypatch):
    path = scene(tmp_path / "scene.tif")
    opts = options().validate()
    roi = squares([(10, 10), (200, 200)], 20)
    summary = validate_inputs(
        path, opts, roi=roi, mask=None, limits=Limits(), memory_budget_mb=10**6
    )
    plan = plan_edit(path, opts, roi_geojson=roi)
    assert summary["memory_estimate_mb"] == estimate_edit(plan)[1]
    assert summary["roi_window"] == [10, 10, 210, 210]
    # over the window limit: the service's own 413 message, naming the field, not the path
    monkeypatch.setattr(plan_module, "MAX_WINDOW_PIXELS", 1000)
    with pytest.raises(LimitError) as info:
        validate_inputs(path, opts, roi=None, mask=None, limits=Limits())
    assert str(info.value) == (
        "the area to edit (256x256 px with context) is larger than 1,000 px: send a smaller ROI"
    )


def test_run_plan_refuses_an_unwritable_output_before_reading_a_pixel(tmp_path, pixel_reads):
    from rs_edit.edit import run_plan
    from rs_edit.errors import InputError

    path = scene(tmp_path / "scene.tif")
    plan = plan_edit(path, options(preset="tiny"), roi_geojson=squares([(30, 30)], 20))
    with pytest.raises(InputError, match="output folder does not exist"):
        run_plan(plan, tmp_path / "missing" / "out.tif")
    with pytest.raises(InputError, match="overwrite the input"):
        run_plan(plan, path)
    assert pixel_reads == []


def test_the_cli_plans_the_edit_once(tmp_path, monkeypatch):
    """`rs-edit edit` plans once: the memory check and the edit use the same plan."""
    from rs_edit import cli, edit

    path = scene(tmp_path / "scene.tif", size=64)
    roi = tmp_path / "roi.geojson"
    roi.write_text(json.dumps(squares([(20, 20)], 16)), encoding="utf-8")
    planned: list[EditPlan] = []
    original = plan_module.plan_edit

    def counting(*args, **kwargs):
        planned.append(original(*args, **kwargs))
        return planned[-1]

    monkeypatch.setattr(plan_module, "plan_edit", counting)
    ran: list[EditPlan] = []
    monkeypatch.setattr(edit, "run_plan", lambda plan, output, **kw: ran.append(plan) or _done())
    code = cli.main(
        ["edit", str(path), "--roi", str(roi), "--prompt", "flooded", "--preset", "tiny",
         "--clip", "tiny-random", "-o", str(tmp_path / "out.tif"), "--quiet"]
    )  # fmt: skip
    assert code == 0
    assert len(planned) == 1 and ran == planned


def _done():
    from rs_edit.edit import EditResult
    from rs_edit.report import EditReport

    return EditResult(outputs=[], report=EditReport(clip_similarity_input=0.0))


def test_the_memory_estimate_counts_the_example(tmp_path):
    """An example's patches join the finest scale's pool: a large example costs memory."""
    path = scene(tmp_path / "scene.tif")
    example = scene(tmp_path / "example.tif", size=1024)
    roi = squares([(30, 30)], 20)
    without = estimate_edit(plan_edit(path, options(preset="tiny"), roi_geojson=roi))[1]
    plan = plan_edit(path, options(preset="tiny", reference=str(example)), roi_geojson=roi)
    assert plan.example.size == (1024, 1024)
    with_example = estimate_edit(plan)[1]
    assert with_example == estimate_mb(
        plan.sizes, bands=3, preset="tiny", clip=plan.options.clip, example_pixels=1024 * 1024
    )
    assert with_example > without + 500  # 1 M px x 3 bands x 25 patch values x 28 B ~ 2 GB
