"""The outline measure (`engine/boundary.py`, `cut_ratio`): an ROI whose new content changes
texture along its outline shows, one continuing the texture around it does not; an outline that
already runs along an edge of the input keeps its score of about 1; and on real imagery, the sea
pasted into a box of land (the cut the eye finds at once) is flagged."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from conftest import SHARED_IMAGERY
from rasterio.windows import Window
from test_realism import texture as realism_texture

from rs_edit.engine.boundary import cut_ratio, cut_unit
from rs_edit.engine.pyramid import gaussian_blur

SIZE = 128


def texture(seed: int) -> torch.Tensor:
    """(3, SIZE, SIZE): detail at several scales, about [-1, 1]."""
    return realism_texture(seed, SIZE)


def box(lo: int = 40, hi: int = 88, size: int = SIZE) -> np.ndarray:
    roi = np.zeros((size, size), dtype=bool)
    roi[lo:hi, lo:hi] = True
    return roi


def test_the_input_itself_scores_about_one_or_less():
    src, roi = texture(0), box()
    assert cut_ratio(src, src, roi) <= 1.0 + 1e-9


def test_other_content_of_the_same_texture_does_not_show():
    src, roi = texture(0), box()
    edited = torch.where(torch.from_numpy(roi), texture(1), src)
    assert cut_ratio(edited, src, roi) < 1.3


def test_calm_content_in_a_textured_tile_shows_although_its_colours_match():
    # The ROI keeps the tile's colours at large scales and a quarter of its finest detail: no
    # colour step at the outline, but the texture changes along the whole of it.
    src, roi = texture(0), box()
    calm = gaussian_blur(src[None], 4.0)[0] + 0.25 * (src - gaussian_blur(src[None], 1.0)[0])
    edited = torch.where(torch.from_numpy(roi), calm, src)
    assert cut_ratio(edited, src, roi) > 1.5


def test_an_outline_along_an_edge_of_the_input_keeps_about_one():
    # Left of column 64 textured, right of it flat; the ROI's right side runs on that edge. The
    # input has the step there, so the unit is the input's own score on the outline.
    src = texture(0)
    src[:, :, 64:] = 0.2
    roi = np.zeros((SIZE, SIZE), dtype=bool)
    roi[30:100, 20:64] = True
    assert cut_ratio(src, src, roi) == pytest.approx(1.0)
    assert cut_unit(src, roi) > 0


def test_numpy_and_torch_give_the_same_score_and_an_empty_roi_is_refused():
    src, roi = texture(0), box()
    edited = torch.where(torch.from_numpy(roi), texture(2), src)
    assert cut_ratio(edited, src, roi) == pytest.approx(cut_ratio(edited.numpy(), src.numpy(), roi))
    with pytest.raises(ValueError, match="empty"):
        cut_unit(src, np.zeros((SIZE, SIZE), dtype=bool))


LANDSAT = SHARED_IMAGERY / "rasterio__RGB.byte.tif"


@pytest.mark.skipif(not LANDSAT.is_file(), reason="shared imagery not present")
def test_the_sea_pasted_into_a_box_of_land_shows_on_a_real_tile():
    # A 256 px window of a Landsat scene: land with clouds on the left, sea on the right. A box
    # on the coast filled with sea from the right of the window is the cut the realism benchmark
    # found (land meeting sea along the box's straight top and left edges).
    with rasterio.open(LANDSAT) as src:
        tile = src.read(window=Window(250, 250, 256, 256)).astype(np.float32)
    roi = np.zeros((256, 256), dtype=bool)
    roi[80:176, 80:176] = True
    sea = tile[:, 80:176, 150:246]
    edited = tile.copy()
    edited[:, roi] = sea.reshape(3, -1)
    assert cut_ratio(edited, tile, roi) > 1.4
    assert cut_ratio(tile, tile, roi) <= 1.0 + 1e-9
