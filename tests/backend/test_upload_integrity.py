"""Corrupt compressed blocks of an upload are refused at submission (400), not found by a job.

The measurement behind `raster._check_blocks`: random bytes written into the data of one tile of
a DEFLATE GeoTIFF (20 corruptions, fixed seed). GDAL's read alone catches 12 of them (libtiff
stops inflating once a tile's pixels are out, so it never reaches the stream's Adler-32
checksum); inflating every block to its end catches all 20. A "corruption" that writes the
bytes already there changes nothing and is redrawn (no decoder could tell).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import RasterioError
from rasterio.transform import from_origin
from service_helpers import ThreadServer, submit

from rs_edit import raster
from rs_edit.errors import RasterError
from rs_edit.raster import check_integrity, inspect_raster
from rs_edit.service.config import ServiceConfig
from rs_edit.service.standin import standin

pytestmark = pytest.mark.timeout(120)

SEED = 12345
CORRUPTIONS = 20


def _image(size: int = 256, bands: int = 3) -> np.ndarray:
    """Compressible pixels, like imagery (smooth fields plus sensor noise)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    base = np.sin(x / 17.0) * 60 + np.cos(y / 23.0) * 50 + 120
    planes = [base + rng.normal(0, 6, base.shape) + 10 * b for b in range(bands)]
    return np.stack(planes).clip(0, 255).astype("uint8")


def _write(path: Path, data: np.ndarray, **profile) -> Path:
    bands, height, width = data.shape
    kwargs = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=bands,
        dtype=str(data.dtype),
        crs="EPSG:32633",
        transform=from_origin(500000, 5500000, 10, 10),
    )
    kwargs.update(profile)
    with rasterio.open(path, "w", **kwargs) as dst:
        dst.write(data)
    return path


def _deflate_tiles(path: Path) -> Path:
    return _write(path, _image(), tiled=True, blockxsize=128, blockysize=128, compress="deflate")


def _tile_areas(path: Path) -> list[tuple[int, int]]:
    """(offset, byte count) of every tile's compressed data."""
    with rasterio.open(path) as src:
        return [(offset, n) for _, _, _, offset, n in raster._tiff_blocks(src)]


def _corruptions(source: Path, folder: Path, n: int = CORRUPTIONS, seed: int = SEED) -> list:
    """`n` copies of `source`, each with 1-16 random bytes written into one tile's data."""
    raw = source.read_bytes()
    areas = _tile_areas(source)
    rng = np.random.default_rng(seed)
    paths = []
    while len(paths) < n:
        offset, size = areas[int(rng.integers(len(areas)))]
        count = int(rng.integers(1, 17))
        at = offset + int(rng.integers(0, size - count))
        new = rng.integers(0, 256, count, dtype=np.uint8).tobytes()
        if new == raw[at : at + count]:
            continue  # the same bytes: not a corruption
        data = bytearray(raw)
        data[at : at + count] = new
        path = folder / f"corrupt{len(paths):02d}.tif"
        path.write_bytes(bytes(data))
        paths.append(path)
    return paths


def _gdal_read_fails(path: Path) -> bool:
    """What the upload check did before: one GDAL read of all pixels."""
    try:
        with rasterio.open(path) as src:
            src.read()
    except RasterioError:
        return True
    return False


def _refused(path: Path) -> bool:
    try:
        inspect_raster(path)
    except RasterError:
        return True
    return False


def test_deflate_tile_corruptions_are_all_caught(tmp_path: Path):
    source = _deflate_tiles(tmp_path / "clean.tif")
    assert not _refused(source)
    clean = rasterio.open(source).read()
    paths = _corruptions(source, tmp_path)
    for path in paths:  # each one really is corrupt: its pixels differ or GDAL fails
        if not _gdal_read_fails(path):
            with rasterio.open(path) as src:
                assert not np.array_equal(src.read(), clean), path.name
    before = sum(_gdal_read_fails(p) for p in paths)
    after = sum(_refused(p) for p in paths)
    assert before == 12  # GDAL's read alone (the figure with this seed)
    assert after == CORRUPTIONS


def test_check_integrity_decodes_every_block_of_a_large_upload(tmp_path: Path, monkeypatch):
    """`inspect_raster` decodes only rasters of bounded size; `check_integrity` (every upload
    at submission) any size, one block at a time."""
    corrupt = _corruptions(_deflate_tiles(tmp_path / "clean.tif"), tmp_path, n=3, seed=7)
    monkeypatch.setattr(raster, "_HEAVY_READ_LIMIT", 0)  # every raster counts as large
    for path in corrupt:
        inspect_raster(path)  # no pixel decoded: not detected here
        with pytest.raises(RasterError, match="corrupt|cannot read raster"):
            check_integrity(path)


@pytest.mark.parametrize(
    "profile",
    [
        {"compress": "deflate", "tiled": True, "blockxsize": 128, "blockysize": 128},
        {"compress": "deflate", "predictor": 2, "tiled": True, "blockxsize": 64, "blockysize": 64},
        {
            "compress": "deflate",
            "interleave": "band",
            "tiled": True,
            "blockxsize": 128,
            "blockysize": 128,
        },
        {"compress": "deflate"},  # strips, the last one short
        {"compress": "deflate", "interleave": "band"},
        {"compress": "lzw", "tiled": True, "blockxsize": 128, "blockysize": 128},
        {"compress": "zstd"},
        {"compress": "packbits"},
        {},
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()) or "uncompressed",
)
def test_intact_rasters_pass(tmp_path: Path, profile: dict):
    data = _image(size=200)  # not a multiple of the block size: partial edge blocks
    path = _write(tmp_path / "ok.tif", data, **profile)
    check_integrity(path)
    assert inspect_raster(path).count == 3
    float_path = _write(tmp_path / "f.tif", data.astype("float32") / 7, **profile)
    check_integrity(float_path)


def test_sparse_tiles_pass(tmp_path: Path):
    """Blocks never written (offset 0) read as nodata: not corrupt."""
    path = tmp_path / "sparse.tif"
    with (
        rasterio.Env(SPARSE_OK=True),
        rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=256,
            height=256,
            count=1,
            dtype="uint8",
            tiled=True,
            blockxsize=128,
            blockysize=128,
            compress="deflate",
            nodata=0,
            sparse_ok=True,
        ) as dst,
    ):
        dst.write(_image(size=128, bands=1), window=((0, 128), (0, 128)))
    check_integrity(path)


def test_inflate_bomb_is_bounded(tmp_path: Path):
    """A block whose stream inflates past its pixels is refused without inflating it all."""
    import zlib

    with pytest.raises(RasterError, match="more pixels than a block holds"):
        raster._inflate_checked(zlib.compress(bytes(50_000_000)), 128 * 128, (0, 0, 1), "x.tif")
    raster._inflate_checked(zlib.compress(bytes(128 * 128)), 128 * 128, (0, 0, 1), "x.tif")
    with pytest.raises(RasterError, match="ends early"):
        raster._inflate_checked(zlib.compress(bytes(1000))[:-6], 128 * 128, (0, 0, 1), "x.tif")


def test_corrupt_upload_is_a_400_at_submission(tmp_path: Path):
    corrupt = _corruptions(_deflate_tiles(tmp_path / "clean.tif"), tmp_path, n=CORRUPTIONS)
    # The ones GDAL's read alone lets through: only the checksum finds them.
    silent = [p for p in corrupt if not _gdal_read_fails(p)]
    assert silent
    data = tmp_path / "data"
    with ThreadServer(data, ServiceConfig(device="cpu"), standin()) as server, server.client() as c:
        for path in silent[:3]:
            response = submit(c, path, clip="tiny-random")
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "bad_raster"
            assert "image" in error["message"] and "corrupt" in error["message"]
            assert str(tmp_path) not in response.text  # the field's name, never a server path
        assert c.get("/v1/jobs").json()["jobs"] == []
