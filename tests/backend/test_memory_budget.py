"""Memory-bounded jobs (issue 17): an edit's peak memory is estimated before any pixel is read,
and a job over the memory budget is refused at submission (413) by the service and with exit
status 2 by `rs-edit edit`. The case that drove a server from 1.1 GB to 22.8 GB: a 72 KB upload,
a 4600x4600 all-zero DEFLATE GeoTIFF edited whole (no ROI) with preset tiny."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from service_helpers import ThreadServer, rgb_tile, roi_polygon, submit, wait

from rs_edit import memory
from rs_edit.cli import EXIT_BAD_INPUT, main
from rs_edit.errors import ParameterError
from rs_edit.memory import MemoryBudgetError, estimate_mb, resolve_budget
from rs_edit.service.config import ServiceConfig
from rs_edit.service.errors import response_for
from rs_edit.service.standin import standin

pytestmark = pytest.mark.timeout(180)

BUDGET_MB = 8000  # a machine with 16 GB: half of it


def zero_deflate_tif(path: Path, size: int = 4600, bands: int = 3) -> Path:
    """An all-zero tiled DEFLATE GeoTIFF: tens of KB on disk, size x size pixels declared."""
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(500000, 5500000, 10, 10),
        "compress": "deflate",
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
    }
    block = np.zeros((bands, 512, 512), np.uint8)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 512):
            for col in range(0, size, 512):
                window = rasterio.windows.Window(col, row, 512, 512).intersection(
                    rasterio.windows.Window(0, 0, size, size)
                )
                dst.write(block[:, : window.height, : window.width], window=window)
    return path


@pytest.fixture(scope="module")
def big_zero(tmp_path_factory) -> Path:
    path = zero_deflate_tif(tmp_path_factory.mktemp("memory") / "zeros_4600.tif")
    assert path.stat().st_size < 500_000  # a small upload ...
    return path


@pytest.fixture(scope="module")
def small_tile(tmp_path_factory) -> Path:
    return rgb_tile(tmp_path_factory.mktemp("memory_small") / "tile.tif")


# --- the estimate ---------------------------------------------------------------------------------


def test_estimate_grows_with_window_size_and_bands():
    sizes = [128, 256, 512, 1024, 4600]
    by_size = [estimate_mb([(s, s)], bands=3, preset="tiny", guidance="none") for s in sizes]
    assert by_size == sorted(by_size) and len(set(by_size)) == len(by_size)
    by_bands = [
        estimate_mb([(512, 512)], bands=b, preset="tiny", guidance="none") for b in (1, 3, 8)
    ]
    assert by_bands[0] < by_bands[1] < by_bands[2]
    # the window's pixels drive it: 4600 px whole is far beyond a 16 GB machine's half
    assert by_size[-1] > 4 * BUDGET_MB
    assert by_size[0] < 2000  # a small window costs about the process itself


def test_estimate_counts_training_clip_and_the_largest_window():
    tiny = estimate_mb([(256, 256)], bands=3, preset="tiny", guidance="none")
    assert estimate_mb([(256, 256)], bands=3, preset="tiny", guidance="finetune") > tiny
    assert estimate_mb([(256, 256)], bands=3, preset="balanced", guidance="auto") > tiny
    big_clip = estimate_mb(
        [(256, 256)], bands=3, preset="tiny", guidance="none", clip="RemoteCLIP-ViT-L-14"
    )
    assert big_clip > tiny
    # several windows: the patch work of the largest one, the pixels of all of them held
    two = estimate_mb([(256, 256), (1024, 1024)], bands=3, preset="tiny", guidance="none")
    one = estimate_mb([(1024, 1024)], bands=3, preset="tiny", guidance="none")
    assert one <= two < one + estimate_mb([(256, 256)], bands=3, preset="tiny", guidance="none")


def test_estimate_is_not_under_the_measured_peaks():
    """bench/memory.py's measured peaks (docs/BENCHMARKS.md "Memory per window")."""
    for size, preset, peak_mb in MEASURED:
        assert estimate_mb([(size, size)], bands=3, preset=preset, guidance="none") >= peak_mb


MEASURED = [
    (128, "tiny", 1037),
    (128, "fast", 1024),
    (256, "tiny", 1106),
    (256, "fast", 1107),
    (512, "tiny", 1599),
]


def test_budget_from_value_env_or_half_the_machine(monkeypatch):
    assert resolve_budget(1234, env={}) == 1234
    assert resolve_budget(None, env={memory.BUDGET_ENV: "4321"}) == 4321
    assert resolve_budget(None, env={}) == max(memory.total_memory_mb() // 2, 1024)
    assert memory.total_memory_mb() > 256
    for bad in ("lots", "0", "-5"):
        with pytest.raises(ParameterError, match="MB"):
            resolve_budget(None, env={memory.BUDGET_ENV: bad})
    with pytest.raises(ParameterError):
        ServiceConfig(memory_budget_mb=0).validate()
    monkeypatch.setenv(memory.BUDGET_ENV, "2345")
    assert ServiceConfig().memory_budget() == 2345
    assert ServiceConfig(memory_budget_mb=999).memory_budget() == 999


def test_the_error_maps_to_413_naming_estimate_and_budget():
    response = response_for(MemoryBudgetError(90_000, 8_000, [(4600, 4600)]))
    assert response.status_code == 413
    body = json.loads(response.body)
    assert body["error"]["code"] == "memory_budget"
    assert "90,000 MB" in body["error"]["message"] and "8,000 MB" in body["error"]["message"]


# --- the service ----------------------------------------------------------------------------------


def test_service_refuses_the_72kb_bomb_and_keeps_serving(tmp_path, big_zero, small_tile):
    config = ServiceConfig(memory_budget_mb=BUDGET_MB)
    with ThreadServer(tmp_path / "data", config, edit_fn=standin(1)) as srv, srv.client() as c:
        answer = submit(c, big_zero, preset="tiny", guidance="none", clip="tiny-random")
        assert answer.status_code == 413, answer.text
        error = answer.json()["error"]
        assert error["code"] == "memory_budget"
        message = error["message"]
        estimate = estimate_mb([(4600, 4600)], bands=3, preset="tiny", guidance="none")
        assert f"{estimate:,} MB" in message
        assert f"{BUDGET_MB:,} MB" in message
        assert "4600x4600" in message and "smaller ROI" in message and "preset" in message
        assert str(tmp_path) not in message
        # nothing was queued, nothing stays on disk, the server answers
        assert not any((tmp_path / "data" / "jobs").iterdir())
        health = c.get("/v1/health")
        assert health.status_code == 200
        assert health.json()["limits"]["memory_budget_mb"] == BUDGET_MB
        # a small edit of the same big raster (an ROI) and a small raster are both accepted
        roi = roi_polygon(100, 100, 200, 200)
        for image, kw in ((big_zero, {"roi": roi}), (small_tile, {})):
            ok = submit(c, image, preset="tiny", guidance="none", clip="tiny-random", **kw)
            assert ok.status_code == 201, ok.text
            assert wait(c, ok.json()["id"])["status"] == "succeeded"


def test_service_budget_is_the_limit(tmp_path, small_tile):
    """The same small job, refused under a budget below its estimate: the budget decides."""
    estimate = estimate_mb([(64, 64)], bands=3, preset="tiny", guidance="none")
    config = ServiceConfig(memory_budget_mb=estimate - 1)
    with ThreadServer(tmp_path / "data", config, edit_fn=standin(1)) as srv, srv.client() as c:
        answer = submit(c, small_tile, preset="tiny", guidance="none", clip="tiny-random")
        assert answer.status_code == 413, answer.text
        assert f"{estimate - 1:,} MB" in answer.json()["error"]["message"]


# --- the command line -----------------------------------------------------------------------------


def test_cli_refuses_over_budget_with_exit_2(tmp_path, big_zero, capsys):
    out = tmp_path / "out.tif"
    args = ["edit", str(big_zero), "--prompt", "forest", "-o", str(out), "--preset", "tiny"]
    args += ["--guidance", "none", "--clip", "tiny-random", "--device", "cpu", "--quiet"]
    assert main([*args, "--memory-budget", str(BUDGET_MB)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "memory budget" in err and f"{BUDGET_MB:,} MB" in err
    assert "raise --memory-budget" in err
    assert not out.exists()


def test_cli_budget_from_env_and_raised(tmp_path, big_zero, capsys, monkeypatch):
    args = ["edit", str(big_zero), "--prompt", "forest", "--preset", "tiny"]
    args += ["--guidance", "none", "--clip", "tiny-random", "--device", "cpu", "--quiet"]
    monkeypatch.setenv(memory.BUDGET_ENV, "3000")
    assert main([*args, "-o", str(tmp_path / "a.tif")]) == EXIT_BAD_INPUT
    assert "3,000 MB" in capsys.readouterr().err
    # raised: the memory check passes and the edit goes on to the next check (a missing
    # output folder), which proves the budget was the only reason before
    huge = str(10 * estimate_mb([(4600, 4600)], bands=3, preset="tiny", guidance="none"))
    missing = tmp_path / "missing" / "b.tif"
    assert main([*args, "-o", str(missing), "--memory-budget", huge]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "memory budget" not in err and "output folder does not exist" in err
