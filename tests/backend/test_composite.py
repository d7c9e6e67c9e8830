"""Band scaling and compositing: exact inverse, bit-exact outside the ROI, feather inside it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_data
from rasterio.enums import ColorInterp

from rs_edit.bands import BandScaling, parse_band_list, rgb_bands
from rs_edit.composite import composite, roi_alpha
from rs_edit.errors import ParameterError


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16"])
def test_integer_scaling_inverse_is_exact(dtype):
    data = random_data(dtype, 3)
    valid = np.ones(data.shape[1:], dtype=bool)
    scaling = BandScaling.fit(data, valid)
    model = scaling.forward(data)
    assert model.dtype == np.float32
    assert model.min() >= -1.0 and model.max() <= 1.0
    assert np.array_equal(scaling.inverse(model), data)
    assert BandScaling.from_dict(scaling.to_dict()) == scaling


def test_scaling_ignores_invalid_pixels_and_constant_bands():
    data = np.full((2, 4, 4), 10, dtype="uint16")
    data[0, 0, 0] = 0  # nodata, excluded from the fit
    data[0, 1:, :] = 20
    valid = np.ones((4, 4), dtype=bool)
    valid[0, 0] = False
    scaling = BandScaling.fit(data, valid)
    assert scaling.lo == (10.0, 10.0) and scaling.hi == (20.0, 11.0)
    assert scaling.forward(data, valid)[:, 0, 0].tolist() == [0.0, 0.0]


def test_inverse_clips_to_dtype_range():
    scaling = BandScaling(lo=(0.0,), hi=(255.0,), dtype="uint8")
    native = scaling.inverse(np.array([[[-3.0, 3.0, 0.0]]], dtype=np.float32))
    assert native.tolist() == [[[0, 255, 128]]]


def make_case(dtype="uint8", nodata=None):
    original = random_data(dtype, 3, 20, 30)
    valid = np.ones((20, 30), dtype=bool)
    bands = [0, 1, 2]
    scaling = BandScaling.fit(original, valid)
    roi = np.zeros((20, 30), dtype=bool)
    roi[5:15, 8:22] = True
    return original, valid, bands, scaling, roi


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "float64"])
def test_outside_roi_bit_exact_and_inside_changed(dtype):
    original, valid, bands, scaling, roi = make_case(dtype)
    edited = -scaling.forward(original)  # a strong edit everywhere
    alpha = roi_alpha(roi, feather_px=3)
    result = composite(
        original, edited, scaling=scaling, alpha=alpha, valid=valid, data_bands=bands, nodata=None
    )
    assert result.dtype == original.dtype
    assert np.array_equal(result[:, ~roi], original[:, ~roi])
    inner = alpha >= 1.0
    assert inner.sum() > 0
    assert np.array_equal(result[:, inner], scaling.inverse(edited)[:, inner])


def test_feather_band_lies_inside_roi_and_ramps_up():
    roi = np.zeros((30, 30), dtype=bool)
    roi[5:25, 5:25] = True
    alpha = roi_alpha(roi, feather_px=4)
    assert (alpha[~roi] == 0).all()
    assert 0 < alpha[5, 15] < alpha[7, 15] < alpha[9, 15] <= 1.0
    assert alpha[15, 15] == 1.0
    assert np.array_equal(roi_alpha(roi) > 0, roi)


def test_feather_does_not_fade_at_the_image_border():
    roi = np.zeros((20, 20), dtype=bool)
    roi[:, :10] = True  # touches the top, bottom and left borders
    alpha = roi_alpha(roi, feather_px=3)
    assert alpha[0, 0] == 1.0 and alpha[10, 0] == 1.0 and alpha[10, 9] < 1.0


def test_dilation_grows_roi():
    roi = np.zeros((20, 20), dtype=bool)
    roi[10, 10] = True
    alpha = roi_alpha(roi, dilate_px=2)
    assert alpha.sum() == 13  # a diamond of radius 2 (cross-shaped structuring element)
    assert alpha[10, 12] == 1.0 and alpha[10, 13] == 0.0


def test_nodata_and_invalid_pixels_are_kept():
    original, valid, bands, scaling, roi = make_case("uint8")
    original[:, 7, 10] = 0  # nodata pixel inside the ROI
    original[1, 8, 10] = 0  # one band at nodata
    valid[9, 10] = False  # masked pixel
    edited = -scaling.forward(original)
    result = composite(
        original,
        edited,
        scaling=scaling,
        alpha=roi.astype(np.float32),
        valid=valid,
        data_bands=bands,
        nodata=0,
    )
    assert (result[:, 7, 10] == 0).all()
    assert result[1, 8, 10] == 0 and result[0, 8, 10] != original[0, 8, 10]
    assert np.array_equal(result[:, 9, 10], original[:, 9, 10])


def test_edit_never_creates_nodata_by_accident():
    original, valid, bands, scaling, roi = make_case("uint8")
    original[original == 0] = 1
    scaling = BandScaling(lo=(0.0,) * 3, hi=(255.0,) * 3, dtype="uint8")
    edited = np.full((3, 20, 30), -1.0, dtype=np.float32)  # maps exactly to 0 == nodata
    result = composite(
        original,
        edited,
        scaling=scaling,
        alpha=roi.astype(np.float32),
        valid=valid,
        data_bands=bands,
        nodata=0,
    )
    assert (result[:, roi] == 1).all()


def test_alpha_band_is_never_written():
    original = random_data("uint8", 4, 10, 10)
    original[3] = 255
    scaling = BandScaling.fit(original[:3], np.ones((10, 10), dtype=bool))
    edited = -scaling.forward(original[:3])
    result = composite(
        original,
        edited,
        scaling=scaling,
        alpha=np.ones((10, 10), np.float32),
        valid=np.ones((10, 10), dtype=bool),
        data_bands=[0, 1, 2],
        nodata=None,
    )
    assert (result[3] == 255).all() and not np.array_equal(result[:3], original[:3])


def test_unchanged_model_values_keep_original_float_bits():
    original = np.array([[[1e-30, 3.3333333, -7.1e12, 1e30]]], dtype=np.float32)
    valid = np.ones((1, 4), dtype=bool)
    scaling = BandScaling.fit(original, valid)
    result = composite(
        original,
        scaling.forward(original),
        scaling=scaling,
        alpha=np.ones((1, 4), np.float32),
        valid=valid,
        data_bands=[0],
        nodata=None,
    )
    assert result.tobytes() == original.tobytes()


GRAY, R, G, B, A = (
    ColorInterp.gray,
    ColorInterp.red,
    ColorInterp.green,
    ColorInterp.blue,
    ColorInterp.alpha,
)


@pytest.mark.parametrize(
    ("interp", "data_bands", "override", "expected"),
    [
        ([R, G, B], [0, 1, 2], None, (0, 1, 2)),
        ([B, G, R, A], [0, 1, 2], None, (2, 1, 0)),
        ([GRAY] * 4, [0, 1, 2, 3], None, (0, 1, 2)),
        ([GRAY], [0], None, (0, 0, 0)),
        ([GRAY, GRAY], [0, 1], None, (0, 0, 0)),
        ([GRAY] * 13, list(range(13)), (4, 3, 2), (3, 2, 1)),
        ([GRAY] * 13, list(range(13)), (8,), (7, 7, 7)),
        ([A, R, G, B], [1, 2, 3], None, (0, 1, 2)),
    ],
)
def test_rgb_band_choice(interp, data_bands, override, expected):
    assert rgb_bands(interp, data_bands, override) == expected


@pytest.mark.parametrize("override", [(1, 2), (0, 1, 2), (1, 2, 14), (4,)])
def test_rgb_band_override_errors(override):
    interp = [R, G, B, A] if override == (4,) else [GRAY] * 13
    data_bands = [0, 1, 2] if override == (4,) else list(range(13))
    with pytest.raises(ParameterError):
        rgb_bands(interp, data_bands, override)


def test_parse_band_list():
    assert parse_band_list("4, 3,2") == (4, 3, 2)
    with pytest.raises(ParameterError):
        parse_band_list("4;3;2")
