"""Reading, validating and writing rasters: every dtype, band layout and metadata item survives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import rasterio.crs
from conftest import random_data, write_raster
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from rs_edit.edit import EditOptions, edit_raster, identity_editor, prepare
from rs_edit.errors import RasterError
from rs_edit.raster import RESULT_TAG, inspect_raster, read_tile, write_result

DTYPES = ["uint8", "int8", "uint16", "int16", "int32", "uint64", "float32", "float64"]
BAND_LAYOUTS = {
    1: [ColorInterp.gray],
    3: [ColorInterp.red, ColorInterp.green, ColorInterp.blue],
    4: [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha],
    13: [ColorInterp.undefined] * 13,
}
META = (
    "crs",
    "transform",
    "width",
    "height",
    "count",
    "dtypes",
    "nodata",
    "descriptions",
    "colorinterp",
    "scales",
    "offsets",
    "units",
    "mask_flag_enums",
)


def full_metadata_raster(path, dtype, count, nodata=None):
    data = random_data(dtype, count)
    if count == 4:  # alpha: opaque except a transparent corner
        alpha_max = np.iinfo(dtype).max if np.dtype(dtype).kind in "iu" else 1.0
        data[3] = alpha_max
        data[3, :5, :5] = 0
    return write_raster(
        path,
        data,
        nodata=nodata,
        colorinterp=BAND_LAYOUTS[count],
        descriptions=[f"band {i}" for i in range(1, count + 1)],
        units=["W m-2 sr-1 um-1"] * count,
        scales=[0.25] * count,
        offsets=[-3.0] * count,
        tags={"ACQUISITION": "2020-08-31", "SENSOR": "test"},
        band_tags=[{"WAVELENGTH": str(400 + 10 * i)} for i in range(count)],
    )


def assert_same_raster(a_path, b_path):
    with rasterio.open(a_path) as a, rasterio.open(b_path) as b:
        for key in META:
            if key == "nodata" and a.nodata is not None and np.isnan(a.nodata):
                assert b.nodata is not None and np.isnan(b.nodata)
                continue
            assert getattr(a, key) == getattr(b, key), key
        pa, pb = a.read(), b.read()
        assert np.array_equal(pa, pb, equal_nan=pa.dtype.kind == "f")
        tags_b = b.tags()
        assert RESULT_TAG in tags_b
        settings = json.loads(tags_b.pop(RESULT_TAG))
        assert a.tags() == tags_b
        for i in range(1, a.count + 1):
            assert a.tags(i) == b.tags(i)
    return settings


@pytest.mark.parametrize("count", sorted(BAND_LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_round_trip_keeps_pixels_and_metadata(tmp_path, dtype, count):
    src = full_metadata_raster(tmp_path / "in.tif", dtype, count, nodata=0)
    tile = prepare(src, EditOptions(prompt="identity"))
    out = edit_raster(tile, tmp_path / "out.tif", identity_editor)
    settings = assert_same_raster(src, out)
    assert settings["prompt"] == "identity"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.tif"]


def test_nan_nodata_float_round_trip(tmp_path):
    data = random_data("float32", 2)
    data[:, 3:9, 4:12] = np.nan
    src = write_raster(tmp_path / "nan.tif", data, nodata=float("nan"))
    tile = prepare(src, EditOptions(prompt="x"))
    assert not tile.valid[3:9, 4:12].any() and tile.valid[20:, 20:].all()
    assert_same_raster(src, edit_raster(tile, tmp_path / "out.tif"))


def test_internal_mask_is_kept_and_read_as_invalid(tmp_path):
    mask = np.ones((48, 64), dtype=bool)
    mask[10:20, 10:30] = False
    src = write_raster(tmp_path / "m.tif", random_data("uint8", 3), internal_mask=mask)
    info = inspect_raster(src)
    assert info.has_dataset_mask
    tile = read_tile(info)
    assert np.array_equal(tile.valid, mask)
    out = edit_raster(prepare(src, EditOptions(prompt="x")), tmp_path / "out.tif")
    with rasterio.open(out) as dst:
        assert np.array_equal(dst.read_masks(1) > 0, mask)


def test_alpha_band_marks_invalid_and_is_not_modelled(tmp_path):
    src = full_metadata_raster(tmp_path / "a.tif", "uint8", 4)
    info = inspect_raster(src)
    assert info.alpha_band == 3 and info.data_bands == (0, 1, 2)
    tile = prepare(src, EditOptions(prompt="x"))
    assert tile.model_image.shape[0] == 3
    assert not tile.valid[:5, :5].any() and tile.valid[5:, 5:].all()


def test_window_is_replaced_and_rest_kept(tmp_path):
    data = random_data("uint16", 2, 100, 120)
    src = write_raster(
        tmp_path / "in.tif", data, tiled=True, blockxsize=32, blockysize=32, compress="lzw"
    )
    info = inspect_raster(src)
    window = Window(30, 40, 25, 17)
    patch = np.full((2, 17, 25), 7, dtype="uint16")
    out = write_result(info, tmp_path / "out.tif", [(window, patch)], settings={"k": 1})
    with rasterio.open(out) as dst:
        got = dst.read()
        assert dst.profile["tiled"] and dst.profile["blockxsize"] == 32
        assert dst.compression.name.lower() == "lzw"
    expected = data.copy()
    expected[:, 40:57, 30:55] = 7
    assert np.array_equal(got, expected)


def test_lossy_jpeg_input_is_written_losslessly(tmp_path):
    data = random_data("uint8", 3, 64, 64)
    src = write_raster(
        tmp_path / "j.tif",
        data,
        compress="jpeg",
        tiled=True,
        blockxsize=64,
        blockysize=64,
        photometric="ycbcr",
    )
    out = edit_raster(prepare(src, EditOptions(prompt="x")), tmp_path / "out.tif")
    with rasterio.open(src) as a, rasterio.open(out) as b:
        assert b.compression.name.lower() == "deflate"
        assert np.array_equal(a.read(), b.read())


def test_cog_output(tmp_path):
    src = full_metadata_raster(tmp_path / "in.tif", "int16", 3)
    tile = prepare(src, EditOptions(prompt="x", cog=True))
    out = edit_raster(tile, tmp_path / "out.tif")
    with rasterio.open(out) as dst:
        assert dst.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert_same_raster(src, out)


def test_png_without_georeferencing(tmp_path):
    data = random_data("uint8", 3, 40, 50)
    png = tmp_path / "plain.png"
    with rasterio.open(png, "w", driver="PNG", width=50, height=40, count=3, dtype="uint8") as d:
        d.write(data)
    info = inspect_raster(png)
    assert not info.georeferenced and info.driver == "PNG"
    out = edit_raster(prepare(png, EditOptions(prompt="x")), tmp_path / "out.tif")
    with rasterio.open(out) as dst:
        assert dst.driver == "GTiff" and dst.crs is None
        assert np.array_equal(dst.read(), data)


def test_corrupt_compressed_block_is_detected_at_inspection(tmp_path):
    """Every block lies inside the file, but one does not decode: refused up front."""
    src = write_raster(tmp_path / "c.tif", random_data("uint8", 1), compress="deflate")
    with rasterio.open(src) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
    raw = bytearray(src.read_bytes())
    raw[offset : offset + size] = b"\xff" * size
    src.write_bytes(bytes(raw))
    with pytest.raises(RasterError, match="cannot read raster .*c.tif: .*IReadBlock failed"):
        inspect_raster(src)


def test_truncated_png_is_detected_at_inspection(tmp_path):
    """A plain read of a cut PNG returns zeros without an error; decoding it must not pass."""
    png = tmp_path / "cut.png"
    data = random_data("uint8", 3, 96, 96)
    with rasterio.open(png, "w", driver="PNG", width=96, height=96, count=3, dtype="uint8") as d:
        d.write(data)
    inspect_raster(png)  # whole: fine
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    with pytest.raises(RasterError, match="truncated or corrupt.*cut.png"):
        inspect_raster(png)


SIDECAR = """<PAMDataset>
  <SRS>EPSG:32633</SRS>
  <GeoTransform>500000, 10, 0, 5000000, 0, -10</GeoTransform>
  <PAMRasterBand band="1">
    <Description>red</Description>
    <NoDataValue>0</NoDataValue>
    <Metadata><MDI key="STATISTICS_MEAN">99</MDI><MDI key="sensor">x</MDI></Metadata>
  </PAMRasterBand>
  <PAMRasterBand band="2"><Description>green</Description><NoDataValue>0</NoDataValue>
  </PAMRasterBand>
  <PAMRasterBand band="3"><Description>blue</Description><NoDataValue>0</NoDataValue>
  </PAMRasterBand>
</PAMDataset>
"""


@pytest.mark.parametrize("compress", [None, "jpeg"], ids=["byte-copy", "re-encoded"])
def test_metadata_kept_in_a_sidecar_goes_into_the_output(tmp_path, compress):
    """GDAL and QGIS read a .aux.xml next to a raster as its own: the edit keeps that CRS,
    geotransform, nodata and band names, inside the output file (no sidecar of its own), and
    drops the input's statistics, which do not describe the edited pixels."""
    data = random_data("uint8", 3)
    data[:, :4, :4] = 0
    extra = {"compress": compress} if compress else {}
    src = write_raster(tmp_path / "in.tif", data, crs=None, **extra)
    (tmp_path / "in.tif.aux.xml").write_text(SIDECAR)
    info = inspect_raster(src)
    assert info.crs == rasterio.crs.CRS.from_epsg(32633) and info.nodata == 0
    assert info.descriptions == ("red", "green", "blue")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "out.tif.aux.xml").write_text(SIDECAR.replace("32633", "4326"))  # a stale one
    out = edit_raster(prepare(src, EditOptions(prompt="x")), out_dir / "out.tif")
    assert sorted(p.name for p in out_dir.iterdir()) == ["out.tif"]
    with rasterio.open(out) as dst:
        assert dst.crs == info.crs and dst.transform == info.transform
        assert dst.nodata == 0 and dst.descriptions == info.descriptions
        assert dst.tags(1) == {"sensor": "x"}
        if compress is None:
            assert np.array_equal(dst.read(), data)


def test_failed_write_leaves_nothing(tmp_path):
    src = write_raster(tmp_path / "in.tif", random_data("uint8", 1))
    info = inspect_raster(src)
    bad = np.zeros((1, 5, 5), dtype="float32")  # wrong dtype: refused before anything is written
    with pytest.raises(ValueError):
        write_result(info, tmp_path / "out.tif", [(Window(0, 0, 5, 5), bad)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_truncated_tiff_is_detected_at_inspection(tmp_path):
    src = write_raster(
        tmp_path / "t.tif",
        random_data("uint8", 3, 256, 256),
        tiled=True,
        blockxsize=64,
        blockysize=64,
    )
    raw = src.read_bytes()
    src.write_bytes(raw[: int(len(raw) * 0.6)])
    with pytest.raises(RasterError, match="truncated"):
        inspect_raster(src)


@pytest.mark.parametrize("content", [b"", b"hello, not a raster\n", b"II*\x00garbage"])
def test_not_a_raster(tmp_path, content):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(content)
    with pytest.raises(RasterError, match="cannot read raster"):
        inspect_raster(bad)


def test_missing_file(tmp_path):
    with pytest.raises(RasterError, match="not found"):
        inspect_raster(tmp_path / "nope.tif")


def test_result_is_an_ordinary_file_with_umask_permissions(tmp_path):
    import os
    import stat

    src = write_raster(tmp_path / "in.tif", random_data("uint8", 1))
    out = edit_raster(prepare(src, EditOptions(prompt="x")), tmp_path / "out.tif")
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_overviews_force_a_re_encode_so_none_go_stale(tmp_path):
    data = random_data("uint8", 1, 256, 256)
    src = write_raster(tmp_path / "ov.tif", data, tiled=True, compress="deflate")
    with rasterio.open(src, "r+") as dst:
        dst.build_overviews([2, 4])
    info = inspect_raster(src)
    piece = (Window(0, 0, 16, 16), np.zeros((1, 16, 16), dtype="uint8"))
    out = write_result(info, tmp_path / "out.tif", [piece])
    with rasterio.open(out) as dst:
        assert dst.overviews(1) == []  # re-encoded: no stale overview can show the old pixels
        assert (dst.read(1, window=Window(0, 0, 16, 16)) == 0).all()
