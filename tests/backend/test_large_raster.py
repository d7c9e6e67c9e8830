"""Windowed processing: editing a small ROI of a huge scene needs memory for the ROI, not the scene.

A sparse 20000x20000 GeoTIFF (400 MB of pixels, a few kB on disk) and a 2000x2000 one with the same
data at the same pixel position are each edited in a fresh subprocess that reports its peak RSS.
The large scene may cost a little more (GDAL's bounded block cache while copying), never the scene.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import ORIGIN, UTM33
from rasterio.transform import from_origin
from rasterio.windows import Window

REPO_ROOT = Path(__file__).resolve().parents[2]
PIXEL = 10.0
LARGE, SMALL = 20_000, 2_000
DATA = Window(900, 1100, 400, 300)  # where the scene has data (col, row, width, height)
ROI = (1000, 1150, 1200, 1350)  # pixel box col0, row0, col1, row1 inside the data
MAX_EXTRA_RSS_MB = 150  # the full large scene alone would be 400 MB

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    t0 = time.perf_counter()
    from rs_edit.edit import EditOptions, edit_raster, prepare

    src, out, roi_path, kind = sys.argv[1:5]

    def halve(tile, progress):
        return tile.model_image * 0.5 - 0.1

    options = EditOptions(prompt="x", preset="tiny", clip="tiny-random")
    roi = dict(roi_geojson=roi_path) if kind == "roi" else dict(mask_path=roi_path)
    tile = prepare(src, options, **roi)
    edit_raster(tile, out, halve)
    # ru_maxrss survives exec on Linux (it starts at the forking parent's RSS); VmHWM is this
    # process image's own peak.
    hwm = None
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    print(json.dumps({
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "vmhwm_kib": hwm,
        "seconds": time.perf_counter() - t0,
        "window": [int(tile.window.col_off), int(tile.window.row_off),
                   int(tile.window.width), int(tile.window.height)],
    }))
    """
)


def data_block() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(20, 236, size=(1, DATA.height, DATA.width), dtype=np.uint8)


def sparse_profile(size: int) -> dict:
    """A tiled, compressed, sparse 1-band uint8 GeoTIFF on the UTM grid: tiny on disk."""
    return dict(
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="uint8",
        crs=UTM33,
        transform=from_origin(*ORIGIN, PIXEL, PIXEL),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="DEFLATE",
        sparse_ok=True,
    )


def write_sparse(path: Path, size: int) -> Path:
    """A size x size uint8 GeoTIFF with data only in DATA (and one 16x16 patch near the end)."""
    profile = sparse_profile(size)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data_block(), window=DATA)
        corner = np.full((1, 16, 16), 200, dtype=np.uint8)
        dst.write(corner, window=Window(size - 20, size - 20, 16, 16))
    return path


def write_roi(path: Path) -> Path:
    """The ROI box as GeoJSON in the raster's CRS (2008-style named CRS: pixel-exact edges)."""
    c0, r0, c1, r1 = ROI
    ring = [
        [ORIGIN[0] + c * PIXEL, ORIGIN[1] - r * PIXEL]
        for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0))
    ]
    path.write_text(
        json.dumps(
            {
                "type": "Feature",
                "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        ),
        encoding="utf-8",
    )
    return path


def write_mask(path: Path, size: int) -> Path:
    """The ROI box as a sparse mask raster on the scene's grid."""
    c0, r0, c1, r1 = ROI
    profile = sparse_profile(size)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(
            np.ones((1, r1 - r0, c1 - c0), dtype=np.uint8), window=Window(c0, r0, c1 - c0, r1 - r0)
        )
    return path


def run_child(src: Path, out: Path, roi: Path, kind: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RS_EDIT_DEBUG"}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(src), str(out), str(roi), kind],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def roi_pixels(window: Window) -> np.ndarray:
    """Boolean mask of the ROI box on `window`."""
    c0, r0, c1, r1 = ROI
    rows = np.arange(int(window.row_off), int(window.row_off + window.height))
    cols = np.arange(int(window.col_off), int(window.col_off + window.width))
    return ((rows >= r0) & (rows < r1))[:, None] & ((cols >= c0) & (cols < c1))[None, :]


def check_output(src: Path, out: Path, size: int) -> None:
    # A small block cache keeps this (parent) process small too.
    with rasterio.Env(GDAL_CACHEMAX=16), rasterio.open(src) as a, rasterio.open(out) as b:
        assert (b.width, b.height, b.count) == (size, size, 1)
        assert b.crs == a.crs
        assert b.transform == a.transform
        assert b.dtypes == a.dtypes
        # The edited window changed inside the ROI (all but a few rounding coincidences).
        c0, r0, c1, r1 = ROI
        roi_win = Window(c0, r0, c1 - c0, r1 - r0)
        before, after = a.read(1, window=roi_win), b.read(1, window=roi_win)
        changed = before != after
        assert changed.mean() > 0.9, f"only {changed.mean():.1%} of the ROI changed"
        # Every pixel outside the ROI equals the input: compare the whole scene block by block.
        blocks = 0
        for _, win in a.block_windows(1):
            ina, inb = a.read(1, window=win), b.read(1, window=win)
            outside = ~roi_pixels(win)
            assert np.array_equal(ina[outside], inb[outside]), (
                f"pixels outside the ROI differ in {win}"
            )
            blocks += 1
        assert blocks == ((size + 511) // 512) ** 2
        # The data really is there where we put it (the scene is not all zeros).
        far = Window(size - 20, size - 20, 16, 16)
        assert (b.read(1, window=far) == 200).all()


@pytest.mark.parametrize("kind", ["roi", "mask"])
def test_large_scene_memory_is_bounded(tmp_path: Path, kind: str, capsys):
    results = {}
    for size in (SMALL, LARGE):
        src = write_sparse(tmp_path / f"scene_{size}.tif", size)
        assert src.stat().st_size < 2_000_000, "the sparse scene should be tiny on disk"
        roi = (
            write_roi(tmp_path / "roi.geojson")
            if kind == "roi"
            else write_mask(tmp_path / f"mask_{size}.tif", size)
        )
        out = tmp_path / f"out_{size}.tif"
        t0 = time.perf_counter()
        report = run_child(src, out, roi, kind)
        report["wall_s"] = time.perf_counter() - t0
        results[size] = report
        check_output(src, out, size)
        # Only the ROI plus context was read and modelled, not the scene.
        col, row, width, height = report["window"]
        assert width * height < 400 * 400
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp files left"

    key = "vmhwm_kib" if results[SMALL]["vmhwm_kib"] else "maxrss_kib"
    small_mb = results[SMALL][key] / 1024
    large_mb = results[LARGE][key] / 1024
    with capsys.disabled():
        print(
            f"\n[{kind}] peak RSS ({key}) small {small_mb:.0f} MB "
            f"({results[SMALL]['seconds']:.1f} s), large {large_mb:.0f} MB "
            f"({results[LARGE]['seconds']:.1f} s); ru_maxrss small "
            f"{results[SMALL]['maxrss_kib'] / 1024:.0f} MB, large "
            f"{results[LARGE]['maxrss_kib'] / 1024:.0f} MB"
        )
    assert large_mb - small_mb < MAX_EXTRA_RSS_MB, (
        f"peak RSS grows with the scene: {small_mb:.0f} MB for {SMALL}^2, {large_mb:.0f} MB for "
        f"{LARGE}^2"
    )
