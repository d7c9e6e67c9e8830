"""Far-apart polygons are edited in windows of their own and written into one output raster."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import box

from rs_edit.edit import EditOptions, prepare_windows, run_edit
from rs_edit.progress import percent
from rs_edit.raster import inspect_raster
from rs_edit.roi import _group_boxes, roi_from_geojson

ORIGIN_X, ORIGIN_Y, PIXEL = 500_000.0, 4_000_000.0, 1.0


def write_scene(path, size: int) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    base = 100 + 40 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    data = np.stack([base + rng.normal(0, 8, base.shape) + 20 * b for b in range(3)])
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": from_origin(ORIGIN_X, ORIGIN_Y, PIXEL, PIXEL),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.clip(data, 0, 255).astype("uint8"))


def squares_geojson(corners: list[tuple[int, int]], side: int) -> dict:
    """Squares of `side` px with top-left pixel corners (col, row), in the raster's CRS."""
    features = []
    for col, row in corners:
        x0, y1 = ORIGIN_X + col * PIXEL, ORIGIN_Y - row * PIXEL
        ring = box(x0, y1 - side * PIXEL, x0 + side * PIXEL, y1).exterior.coords
        features.append(
            {"type": "Feature", "properties": {},
             "geometry": {"type": "Polygon", "coordinates": [list(map(list, ring))]}}
        )  # fmt: skip
    return {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
        "features": features,
    }


@pytest.mark.parametrize("seed", range(5))
def test_groups_never_give_overlapping_windows(seed):
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(40):
        x, y = rng.uniform(0, 2000, 2)
        w, h = rng.uniform(5, 80, 2)
        boxes.append((x, y, x + w, y + h))
    gap = 128
    groups = _group_boxes(boxes, gap)
    assert sorted(i for g in groups for i in g) == list(range(len(boxes)))
    windows = []
    for g in groups:
        x0 = min(boxes[i][0] for i in g) - gap / 2
        y0 = min(boxes[i][1] for i in g) - gap / 2
        x1 = max(boxes[i][2] for i in g) + gap / 2
        y1 = max(boxes[i][3] for i in g) + gap / 2
        windows.append(box(x0, y0, x1, y1))
    for i in range(len(windows)):
        for j in range(i + 1, len(windows)):
            assert windows[i].intersection(windows[j]).area == 0, (i, j)


def test_near_polygons_share_a_window_and_far_ones_do_not(tmp_path):
    path = tmp_path / "scene.tif"
    write_scene(path, 1024)
    info = inspect_raster(path)
    far = roi_from_geojson(squares_geojson([(10, 10), (970, 970)], 40), info)
    parts = far.clusters(128)
    assert len(parts) == 2
    assert all(p.bbox.width == 40 and p.bbox.height == 40 for p in parts)
    near = roi_from_geojson(squares_geojson([(10, 10), (80, 10)], 40), info)
    assert len(near.clusters(128)) == 1

    tiles = prepare_windows(
        path, EditOptions(prompt="x", context_px=32), roi_geojson=squares_geojson(
            [(10, 10), (970, 970), (500, 40), (40, 500)], 40
        )
    )  # fmt: skip
    # Four windows of at most (40 + 2 * 32) px a side, plus a strip of at most half the context
    # taken up to the raster's edge, instead of one of 1024 x 1024.
    assert len(tiles) == 4
    assert all(t.window.width <= 104 + 16 and t.window.height <= 104 + 16 for t in tiles)
    assert all(t.roi_mask.sum() == 40 * 40 for t in tiles)


@pytest.mark.slow
def test_scattered_polygons_edit_into_one_raster(tmp_path):
    path, out = tmp_path / "scene.tif", tmp_path / "edit.tif"
    write_scene(path, 512)
    corners = [(20, 20), (440, 440), (440, 20)]
    roi = squares_geojson(corners, 32)
    (tmp_path / "roi.geojson").write_text(json.dumps(roi))
    options = EditOptions(
        prompt="flooded", preset="tiny", clip="tiny-random", guidance="none", seed=0,
        context_px=32,
    )  # fmt: skip
    stages = []
    result = run_edit(
        path, out, options, roi_geojson=tmp_path / "roi.geojson",
        cache_dir=tmp_path / "cache", progress=lambda s, i, n, loss=None: stages.append((s, i, n)),
    )  # fmt: skip
    assert len(result.report.windows) == 3
    with rasterio.open(path) as src, rasterio.open(out) as dst:
        before, after = src.read(), dst.read()
        assert dst.transform == src.transform and dst.crs == src.crs
    inside = np.zeros(before.shape[1:], dtype=bool)
    for col, row in corners:
        inside[row : row + 32, col : col + 32] = True
    assert np.array_equal(after[:, ~inside], before[:, ~inside]), "pixels outside the ROI changed"
    for col, row in corners:  # every window was edited
        assert (
            after[:, row : row + 32, col : col + 32] != before[:, row : row + 32, col : col + 32]
        ).any()
    # The job's progress runs on through the windows (one after the other) and never goes
    # back; it used to restart each window's stages, sitting at 96 % for all but the first.
    percents = [percent(s, i, n) for s, i, n in stages]
    assert percents == sorted(percents)
    windows = [p for (s, _, _), p in zip(stages, percents, strict=True) if s == "windows"]
    assert len({round(p) for p in windows}) > 20, "progress hardly moved across the windows"
