"""Is every piece of the edit one the tile has? A measure of broken structures in the ROI.

The region levels (`quality.roi_swd_levels`) compare *distributions* of patches: a ROI made of
road, cars and barrier in the tile's proportions passes them even when a barrier stops dead in
the middle of the road or a dark blob sits across it, because the break is a handful of patches
among thousands. The eye finds those first (bench.realism's overpass, seeds 0 and 1: every
level, the seam and the outline passed).

`coherence_ratio` looks at each patch on its own instead (the "coherence" half of Simakov et
al.'s bidirectional similarity, 2008): the distance from each patch of the ROI to its nearest
patch of the tile outside the ROI, at half resolution (7 px patches there: 14 px of the tile,
a barrier's end with the road on both sides), and takes a high quantile of those distances, so
that a few patches no part of the tile resembles are what it reports. Its unit is the same
figure for the input's own ROI: real content is not all found elsewhere in a tile either.

On the 18 edits of bench.realism (6 cases, seeds 0-2) before this measure: the two the eye
rejects for broken barriers scored 1.12 and 1.18; the others 0.61-1.00 (the overpass whose
median runs through, 0.89; the harbour's boat fragments, 0.76-0.90, are not seen by it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .patches import _nearest, patch_touches, spread

__all__ = ["coherence_ratio", "coherence_score", "coherence_unit"]

_SCALE = 2  # measured at half resolution: 7 px patches there see 14 px of the tile
_PATCH = 7
_STEP = 2  # every other patch position (at the measure's scale) is a query
_QUANTILE = 0.99  # the few worst patches, not the typical one
# The tile's patches searched and the ROI's patches scored (regular subsamples beyond): a
# 256 px window with a 110 px ROI has about 15 000 and 850 (0.04-0.12 s on 2 cores); a 512 px
# window of 8 bands with a 300 px ROI would cost seconds per draft without them.
_MAX_KEYS = 20_000
_MAX_QUERIES = 4096
_CHUNK = 512


def _halved(image) -> torch.Tensor:
    """(1, C, H/2, W/2): the image (C, H, W or H, W; numpy or torch) at the measure's scale."""
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))
    x = x[None] if x.ndim == 2 else x
    return F.avg_pool2d(x[None], _SCALE)


def _spread_of(x: torch.Tensor) -> torch.Tensor:
    """(C,) per-band std of a halved image: the unit its patches are measured in."""
    return x[0].reshape(x.shape[1], -1).std(1).clamp_min(1e-6)


def coherence_score(image, roi, *, invalid=None, scale=None) -> float:
    """The raw score of `coherence_ratio` for one image (C, H, W) and ROI (H, W bool): the
    `_QUANTILE` of the mean squared distance (per value, in per-band std units of `scale`, the
    source's (C,); the image's own when None) from each patch touching the ROI to its nearest
    patch of the image that touches neither it nor `invalid` (H, W bool, optional: nodata).
    NaN when the image is too small or the ROI leaves no patch outside it."""
    if min(np.shape(image)[-2:]) < _SCALE * (_PATCH + 2):
        return float("nan")
    x = _halved(image)
    x = x / (_spread_of(x) if scale is None else torch.as_tensor(scale))[None, :, None, None]

    def halved_mask(mask) -> torch.Tensor:
        m = torch.as_tensor(np.asarray(mask, dtype=bool))[None, None].float()
        return F.max_pool2d(m, _SCALE) > 0

    touched = patch_touches(halved_mask(roi), _PATCH)
    unusable = touched.clone()
    if invalid is not None:
        unusable |= patch_touches(halved_mask(invalid), _PATCH)
    on_grid = torch.zeros(x.shape[-2] - _PATCH + 1, x.shape[-1] - _PATCH + 1, dtype=torch.bool)
    on_grid[::_STEP, ::_STEP] = True
    columns = F.unfold(x, _PATCH)[0].T  # (L, C * p * p), as `patch_touches` numbers them
    keys = columns[~unusable]
    queries = columns[touched & on_grid.flatten()]
    if len(keys) == 0 or len(queries) == 0:
        return float("nan")
    keys = keys[spread(len(keys), _MAX_KEYS)]
    queries = queries[spread(len(queries), _MAX_QUERIES)]
    nearest = keys[_nearest(queries, keys, _CHUNK)]
    return float(torch.quantile((queries - nearest).pow(2).mean(1), _QUANTILE))


def coherence_unit(source, roi, *, invalid=None) -> float:
    """The unit of `coherence_ratio` for a source and ROI: the source's own score."""
    return coherence_score(source, roi, invalid=invalid)


def coherence_ratio(edited, source, roi, *, invalid=None, unit: float | None = None) -> float:
    """How far the edit's worst pieces are from anything in the rest of the tile, relative to
    the input's own ROI (`edited`, `source`: (C, H, W); `roi`: (H, W) bool). About 1 or below:
    no more unlike the tile than the input's content; above (1.1 and more): patches the tile
    has nowhere, such as a barrier broken off or a blob across a line. Pass `unit`
    (`coherence_unit`) when scoring several edits of one tile; `invalid` (H, W bool,
    optional): nodata, never a match."""
    if unit is None:
        unit = coherence_unit(source, roi, invalid=invalid)
    score = coherence_score(edited, roi, invalid=invalid, scale=_spread_of(_halved(source)))
    return score / max(unit, 1e-12)
