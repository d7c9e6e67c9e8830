"""Real imagery from the shared folder: the raster path keeps every pixel and metadata item.

Identity edits must give back the input exactly (pixels and metadata, plus the RS_EDIT tag);
a real edit must leave every pixel outside the ROI bit-identical. Skips cleanly when the shared
folder is absent (a user's checkout has none).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from conftest import shared_images, write_raster
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio import features
from scipy import ndimage
from shapely.geometry import Polygon, mapping

from rs_edit.edit import EditOptions, edit_raster, prepare
from rs_edit.raster import RESULT_TAG, inspect_raster

OPTIONS = EditOptions(prompt="x", preset="tiny", clip="tiny-random")
IMAGES = shared_images()


def is_georeferenced(path: Path) -> bool:
    with rasterio.open(path) as src:
        return src.crs is not None and not src.transform.is_identity


def image_params(only_georeferenced: bool | None = None):
    """One param per shared image (or one skipped param when there is none)."""
    chosen = [
        p for p in IMAGES if only_georeferenced is None or is_georeferenced(p) == only_georeferenced
    ]
    if not chosen:
        return [
            pytest.param(
                None,
                id="no-shared-imagery",
                marks=pytest.mark.skip("shared imagery folder is absent or empty"),
            )
        ]
    return [pytest.param(p, id=p.name) for p in chosen]


def require(path: Path | None) -> Path:
    if path is None or not path.is_file():
        pytest.skip("shared imagery folder is absent or empty")
    return path


# --- helpers ----------------------------------------------------------------------------------


def central_polygon(src) -> Polygon:
    """An irregular octagon around the image centre in the raster's CRS, about half its size."""
    cx, cy = src.width / 2, src.height / 2
    rx, ry = src.width / 4, src.height / 4
    ring = []
    for k in range(8):
        angle = 2 * math.pi * k / 8 + 0.3
        scale = 1.0 if k % 2 == 0 else 0.7
        col, row = cx + rx * scale * math.cos(angle), cy + ry * scale * math.sin(angle)
        ring.append(src.transform @ (col, row))
    return Polygon(ring)


def central_roi_wgs84(path: Path) -> tuple[dict, np.ndarray]:
    """The central polygon as RFC 7946 GeoJSON (lon/lat), and its mask on the raster grid."""
    with rasterio.open(path) as src:
        polygon = central_polygon(src)
        to_wgs84 = Transformer.from_crs(
            ProjCRS.from_user_input(src.crs.to_wkt()), "EPSG:4326", always_xy=True
        )
        lonlat = shapely.transform(
            polygon, lambda xy: np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1]))
        )
        mask = features.rasterize(
            [polygon], out_shape=(src.height, src.width), transform=src.transform, dtype="uint8"
        ).astype(bool)
    feature = {"type": "Feature", "properties": {}, "geometry": mapping(lonlat)}
    return {"type": "FeatureCollection", "features": [feature]}, mask


def central_mask_raster(path: Path, out: Path) -> np.ndarray:
    """A pixel mask (ellipse around the centre) for a plain, non-georeferenced image."""
    with rasterio.open(path) as src:
        h, w = src.height, src.width
    rows, cols = np.ogrid[:h, :w]
    mask = ((rows - h / 2) / (h / 4)) ** 2 + ((cols - w / 2) / (w / 3)) ** 2 <= 1
    write_raster(out, mask[None].astype(np.uint8), crs=None, transform=None)
    return mask


def halve(tile, progress):
    return tile.model_image * 0.5 - 0.1


def read_all(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def assert_pixels_equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    equal_nan = a.dtype.kind == "f"
    if not np.array_equal(a, b, equal_nan=equal_nan):
        diff = ~((a == b) | (np.isnan(a) & np.isnan(b)) if equal_nan else (a == b))
        bands, rows, cols = np.nonzero(diff)
        raise AssertionError(
            f"{diff.sum()} values differ, first at band {bands[0]} row {rows[0]} col {cols[0]}: "
            f"{a[bands[0], rows[0], cols[0]]} != {b[bands[0], rows[0], cols[0]]}"
        )


def assert_same_metadata(src_path: Path, out_path: Path, prompt: str = "x") -> None:
    with rasterio.open(src_path) as a, rasterio.open(out_path) as b:
        assert b.driver == "GTiff"
        for attr in (
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
        ):
            assert getattr(b, attr) == getattr(a, attr), (
                f"{attr}: {getattr(b, attr)!r} != input {getattr(a, attr)!r}"
            )
        out_tags = b.tags()
        assert RESULT_TAG in out_tags, f"no {RESULT_TAG} tag in {sorted(out_tags)}"
        settings = json.loads(out_tags.pop(RESULT_TAG))
        assert settings["prompt"] == prompt
        assert settings["preset"] == "tiny" and settings["clip"] == "tiny-random"
        assert out_tags == a.tags(), "dataset tags differ"
        for bidx in range(1, a.count + 1):
            assert b.tags(bidx) == a.tags(bidx), f"band {bidx} tags differ"
        assert np.array_equal(b.dataset_mask(), a.dataset_mask()), "dataset masks differ"


def nodata_everywhere(data: np.ndarray, nodata) -> np.ndarray:
    if nodata is None:
        return np.zeros(data.shape[1:], dtype=bool)
    if np.isnan(nodata):
        return np.isnan(data).all(axis=0)
    return (data == nodata).all(axis=0)


# --- identity round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("image", image_params())
def test_identity_whole_image(tmp_path: Path, image):
    image = require(image)
    out = tmp_path / "out.tif"
    tile = prepare(image, OPTIONS)
    assert edit_raster(tile, out) == out
    assert_pixels_equal(read_all(image), read_all(out))
    assert_same_metadata(image, out)
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"], "temporary files left"


@pytest.mark.parametrize("image", image_params(only_georeferenced=True))
def test_identity_central_polygon(tmp_path: Path, image):
    image = require(image)
    roi, _ = central_roi_wgs84(image)
    out = tmp_path / "out.tif"
    edit_raster(prepare(image, OPTIONS, roi_geojson=roi), out)
    assert_pixels_equal(read_all(image), read_all(out))
    assert_same_metadata(image, out)


# --- a real edit: outside the ROI stays bit-identical ----------------------------------------


def check_real_edit(
    image: Path, out: Path, tile, expected_mask: np.ndarray, prompt: str = "x"
) -> None:
    before, after = read_all(image), read_all(out)
    assert_same_metadata(image, out, prompt)

    # The ROI the backend used, on the full grid.
    with rasterio.open(image) as src:
        height, width, nodata = src.height, src.width, src.nodata
    roi = np.zeros((height, width), dtype=bool)
    w = tile.window
    r0, c0 = int(w.row_off), int(w.col_off)
    roi[r0 : r0 + int(w.height), c0 : c0 + int(w.width)] = tile.roi_mask
    overlap = (roi & expected_mask).sum() / max(1, (roi | expected_mask).sum())
    assert overlap > 0.95, f"backend ROI and the drawn polygon overlap only {overlap:.1%}"

    # Outside the backend's ROI, and outside the drawn polygon (with 2 px of slack for the
    # reprojection round trip): bit-identical.
    for outside in (~roi, ~ndimage.binary_dilation(expected_mask, iterations=2)):
        assert_pixels_equal(before[:, outside][:, None], after[:, outside][:, None])

    # Inside: the edit happened at valid pixels, and made no new holes.
    valid = ~nodata_everywhere(before, nodata)
    inside = roi & valid
    assert inside.sum() > 100, "the central ROI has too few valid pixels for this test"
    changed = (before != after).any(axis=0) & inside
    assert changed.sum() > 0.5 * inside.sum(), f"only {changed.sum()} of {inside.sum()} changed"
    assert not (nodata_everywhere(after, nodata) & valid).any(), "the edit created nodata holes"


@pytest.mark.parametrize("image", image_params(only_georeferenced=True))
def test_real_edit_central_polygon_keeps_outside(tmp_path: Path, image):
    image = require(image)
    roi, expected = central_roi_wgs84(image)
    out = tmp_path / "out.tif"
    tile = prepare(image, OPTIONS, roi_geojson=roi)
    edit_raster(tile, out, halve)
    check_real_edit(image, out, tile, expected)


@pytest.mark.parametrize("image", image_params(only_georeferenced=False))
def test_real_edit_mask_on_plain_image_keeps_outside(tmp_path: Path, image):
    image = require(image)
    expected = central_mask_raster(image, tmp_path / "mask.tif")
    out = tmp_path / "out.tif"
    tile = prepare(image, OPTIONS, mask_path=tmp_path / "mask.tif")
    edit_raster(tile, out, halve)
    check_real_edit(image, out, tile, expected)


# --- `rs-edit edit` with the tiny preset on every 3-band image --------------------------------


def three_band_params():
    chosen = []
    for p in IMAGES:
        if len(inspect_raster(p).data_bands) == 3:
            chosen.append(pytest.param(p, id=p.name))
    return chosen or image_params()[:1]


@pytest.mark.slow
@pytest.mark.parametrize("image", three_band_params())
def test_rs_edit_edit_tiny_on_three_band_image(tmp_path: Path, image):
    """The contract's command on each real 3-band image: a polygon ROI where the image is
    georeferenced, else a pixel mask."""
    from rs_edit.cli import main

    image = require(image)
    out = tmp_path / "out.tif"
    prompt = "a fire in the forest"
    args = ["edit", str(image), "-o", str(out), "--prompt", prompt]
    args += ["--preset", "tiny", "--clip", "tiny-random", "--seed", "0", "--no-cache", "--quiet"]
    if is_georeferenced(image):
        roi, expected = central_roi_wgs84(image)
        roi_path = tmp_path / "roi.geojson"
        roi_path.write_text(json.dumps(roi))
        args += ["--roi", str(roi_path)]
        tile = prepare(image, OPTIONS, roi_geojson=roi)
    else:
        expected = central_mask_raster(image, tmp_path / "mask.tif")
        args += ["--mask", str(tmp_path / "mask.tif")]
        tile = prepare(image, OPTIONS, mask_path=tmp_path / "mask.tif")
    assert main(args) == 0
    check_real_edit(image, out, tile, expected, prompt)
