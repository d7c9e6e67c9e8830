"""coherence_ratio: does the edit hold pieces the tile has nowhere (a barrier broken off)?"""

import math

import numpy as np

from rs_edit.engine.coherence import coherence_ratio, coherence_score


def barred_tile(seed=0, size=96):
    """A grainy dark tile (3, size, size) crossed by three pale horizontal bars (crash
    barriers on a road), and a box ROI over the middle one."""
    rng = np.random.default_rng(seed)
    tile = (-0.5 + 0.05 * rng.standard_normal((3, size, size))).astype(np.float32)
    for top in (t for t in (20, 50, 80) if t + 4 <= size):
        tile[:, top : top + 4] = 0.8 + 0.05 * rng.standard_normal((3, 4, size))
    roi = np.zeros((size, size), dtype=bool)
    roi[40:64, 30:66] = True
    return tile, roi


def test_a_bar_broken_off_in_the_roi_scores_above_one_and_one_carried_through_does_not():
    tile, roi = barred_tile()
    rng = np.random.default_rng(1)
    # Carried through: the ROI holds another stretch of the same kind (rows 10-34 hold a bar
    # at the same offset as rows 40-64 do), with its own grain.
    carried = tile.copy()
    carried[:, 40:64, 30:66] = tile[:, 10:34, 30:66]
    # Broken off: the bar stops in the middle of the ROI, road beyond it.
    broken = carried.copy()
    broken[:, 50:54, 48:66] = -0.5 + 0.05 * rng.standard_normal((3, 4, 18))
    # A blob across the bar.
    blob = carried.copy()
    blob[:, 46:58, 44:52] = -1.0
    assert coherence_ratio(carried, tile, roi) <= 1.05
    assert coherence_ratio(broken, tile, roi) > 1.5
    assert coherence_ratio(blob, tile, roi) > 1.5


def test_nodata_is_never_a_match():
    tile, roi = barred_tile(seed=2)
    invalid = np.zeros_like(roi)
    invalid[:, :12] = True  # a strip of nodata (zeros) at the left edge
    tile[:, invalid] = 0.0
    zeros = tile.copy()
    zeros[:, roi] = 0.0  # the ROI filled with nodata's value
    # Without the mask, the zeros inside the ROI match the strip's patches exactly; with it,
    # they match nothing, and the score rises (what is left is the ROI's rim either way).
    assert coherence_score(zeros, roi, invalid=invalid) > 1.3 * coherence_score(zeros, roi)
    # The input's own figure does not depend on it here (its ROI is road and bar, no zeros).
    assert coherence_score(tile, roi, invalid=invalid) == coherence_score(tile, roi)


def test_too_small_or_all_roi_is_not_measured():
    tile, roi = barred_tile(size=16)
    roi[:] = False
    roi[4:10, 4:10] = True
    assert math.isnan(coherence_score(tile, roi))  # 8 px at half resolution: no 7 px patch
    tile, roi = barred_tile()
    assert math.isnan(coherence_score(tile, np.ones_like(roi)))  # nothing outside to match
