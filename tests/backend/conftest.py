"""Shared fixtures: tiny synthetic GeoTIFFs written with rasterio, and the shared imagery folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from rs_edit.engine import presets

SHARED_IMAGERY = Path(__file__).resolve().parents[3] / "shared" / "data" / "imagery"
UTM33 = "EPSG:32633"
# A 10 m grid near 15 E, 49.6 N (UTM zone 33N).
ORIGIN = (500000.0, 5500000.0)


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = UTM33,
    transform=None,
    nodata=None,
    colorinterp=None,
    descriptions=None,
    units=None,
    scales=None,
    offsets=None,
    tags=None,
    band_tags=None,
    internal_mask: np.ndarray | None = None,
    **profile,
) -> Path:
    """Write `data` (bands, h, w) as a GeoTIFF with whatever metadata the test asks for."""
    count, height, width = data.shape
    kwargs = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=data.dtype,
        crs=crs,
        transform=transform if transform is not None else from_origin(*ORIGIN, 10, 10),
        nodata=nodata,
    )
    if crs is None and transform is None:
        kwargs.pop("transform")
    kwargs.update(profile)
    env = {"GDAL_TIFF_INTERNAL_MASK": "YES"} if internal_mask is not None else {}
    with rasterio.Env(**env), rasterio.open(path, "w", **kwargs) as dst:
        dst.write(data)
        if colorinterp:
            dst.colorinterp = colorinterp
        for i in range(count):
            if descriptions:
                dst.set_band_description(i + 1, descriptions[i])
            if units:
                dst.set_band_unit(i + 1, units[i])
            if band_tags:
                dst.update_tags(i + 1, **band_tags[i])
        if scales:
            dst.scales = scales
        if offsets:
            dst.offsets = offsets
        if tags:
            dst.update_tags(**tags)
        if internal_mask is not None:
            dst.write_mask(internal_mask.astype(np.uint8) * 255)
    return path


def random_data(dtype: str, count: int, height: int = 48, width: int = 64, seed: int = 0):
    """Random pixels spanning a good part of the dtype's range."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        low, high = max(info.min, -30000), min(info.max, 60000)
        return rng.integers(low, high, size=(count, height, width), endpoint=True).astype(dt)
    return (rng.standard_normal((count, height, width)) * 1000).astype(dt)


@pytest.fixture
def rgb_tif(tmp_path: Path) -> Path:
    """A 64x48 uint8 RGB GeoTIFF on a UTM 33N 10 m grid."""
    return write_raster(
        tmp_path / "rgb.tif",
        random_data("uint8", 3),
        colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue],
        descriptions=["red", "green", "blue"],
    )


def shared_images() -> list[Path]:
    if not SHARED_IMAGERY.is_dir():
        return []
    return sorted(p for p in SHARED_IMAGERY.iterdir() if p.suffix.lower() in (".tif", ".tiff"))


def trained_tiny_preset() -> presets.Preset:
    """`tiny` with a trained coarse network: its own layout needs no training, so tests of the
    trained path (the model cache, training progress, cancel while training) ask for this."""
    return dataclasses.replace(presets.PRESETS["tiny"], coarse="network")


@pytest.fixture
def trained_tiny(monkeypatch):
    monkeypatch.setitem(presets.PRESETS, "tiny", trained_tiny_preset())


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a test module, then as it was."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
