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
rejects for broken barriers scored 1.14 and 1.19; the others 0.77-0.99 (the overpass whose
median runs through, 0.91; the harbour's boat fragments, 0.81-0.93, are not seen by it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["coherence_ratio", "coherence_score", "source_scale"]

_SCALE = 2  # measured at half resolution: 7 px patches there see 14 px of the tile
_PATCH = 7
_STEP = 2  # every other patch position (at the measure's scale) is a query
_QUANTILE = 0.99  # the few worst patches, not the typical one
# The tile's patches searched and the ROI's patches scored (regular subsamples beyond): a
# 256 px window with a 110 px ROI has about 15 000 and 850 (0.05-0.1 s on 2 cores); a 512 px
# window of 8 bands with a 300 px ROI would cost seconds per draft without them.
_MAX_KEYS = 20_000
_MAX_QUERIES = 4096
_CHUNK = 512


def _prepared(image, roi, invalid, scale: np.ndarray | None):
    """The image at the measure's scale in per-band std units of `scale` (the source's), the
    ROI and the invalid pixels there; None when the image is too small for the measure."""
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))
    x = x[None] if x.ndim == 2 else x
    region = torch.as_tensor(np.asarray(roi, dtype=bool))[None, None].float()
    banned = torch.zeros_like(region)
    if invalid is not None:
        banned = torch.as_tensor(np.asarray(invalid, dtype=bool))[None, None].float()
    if min(x.shape[-2:]) < _SCALE * (_PATCH + 2):
        return None
    x = F.avg_pool2d(x[None], _SCALE)
    region, banned = F.max_pool2d(region, _SCALE), F.max_pool2d(banned, _SCALE)
    if scale is None:
        scale = x[0].reshape(len(x[0]), -1).std(1).clamp_min(1e-6).numpy()
    x = x / torch.from_numpy(np.asarray(scale, dtype=np.float32))[None, :, None, None]
    return x, region, banned


def coherence_score(image, roi, *, invalid=None, scale=None) -> float:
    """The raw score of `coherence_ratio` for one image (C, H, W) and ROI (H, W bool): the
    `_QUANTILE` of the mean squared distance (per value, in per-band std units of `scale`, the
    source's; the image's own when None) from each patch touching the ROI to its nearest patch
    of the image that touches neither it nor `invalid` (H, W bool, optional: nodata). NaN when
    the image is too small or the ROI leaves no patch outside it."""
    prepared = _prepared(image, roi, invalid, scale)
    if prepared is None:
        return float("nan")
    x, region, banned = prepared
    columns = F.unfold(x, _PATCH)[0].T  # (L, C * p * p)
    touched = F.max_pool2d(region, _PATCH, stride=1)[0, 0]
    on_grid = torch.zeros_like(touched, dtype=torch.bool)
    on_grid[::_STEP, ::_STEP] = True
    touched = touched.flatten() > 0
    unusable = F.max_pool2d(banned, _PATCH, stride=1)[0, 0].flatten() > 0
    keys = columns[~touched & ~unusable]
    queries = columns[touched & on_grid.flatten()]
    if len(keys) == 0 or len(queries) == 0:
        return float("nan")
    if len(keys) > _MAX_KEYS:
        keys = keys[torch.linspace(0, len(keys) - 1, _MAX_KEYS).long()]
    if len(queries) > _MAX_QUERIES:
        queries = queries[torch.linspace(0, len(queries) - 1, _MAX_QUERIES).long()]
    key_norms = (keys * keys).sum(1)
    nearest = []
    for i in range(0, len(queries), _CHUNK):
        q = queries[i : i + _CHUNK]
        d = torch.addmm(key_norms[None], q, keys.T, alpha=-2.0).min(1).values
        nearest.append((d + (q * q).sum(1)).clamp_min(0) / q.shape[1])
    return float(torch.quantile(torch.cat(nearest), _QUANTILE))


def source_scale(source) -> np.ndarray:
    """Per-band spread of the source at the measure's scale: the unit its patches are in."""
    x = torch.as_tensor(np.asarray(source, dtype=np.float32))
    x = x[None] if x.ndim == 2 else x
    x = F.avg_pool2d(x[None], _SCALE)[0]
    return x.reshape(len(x), -1).std(1).clamp_min(1e-6).numpy()


def coherence_ratio(edited, source, roi, *, invalid=None, unit: float | None = None) -> float:
    """How far the edit's worst pieces are from anything in the rest of the tile, relative to
    the input's own ROI (`edited`, `source`: (C, H, W); `roi`: (H, W) bool). About 1 or below:
    no more unlike the tile than the input's content; above (1.1 and more): patches the tile
    has nowhere, such as a barrier broken off or a blob across a line. Pass `unit` (the
    source's `coherence_score`, with `scale=source_scale(source)`) when scoring several edits
    of one tile; `invalid` (H, W bool, optional): nodata, never a match."""
    scale = source_scale(source)
    if unit is None:
        unit = coherence_score(source, roi, invalid=invalid, scale=scale)
    score = coherence_score(edited, roi, invalid=invalid, scale=scale)
    return score / max(unit, 1e-12)
