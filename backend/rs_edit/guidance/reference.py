"""Multi-condition guidance: a reference image patch as a second target beside the text.

"Make the ROI look like this example of flooded fields": the reference's CLIP image embedding
and the prompt ensemble's text embedding are mixed (weights w and 1 - w, each normalised first,
the sum normalised again), so one CLIP objective steers towards both. Any GDAL-readable image
works (a GeoTIFF chip, a PNG); its RGB bands are chosen as for the tile and stretched to [0, 1].
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..bands import rgb_bands
from ..errors import ParameterError
from ..raster import inspect_raster, read_tile

MAX_REFERENCE_PIXELS = 4096 * 4096


def load_reference(path: str | os.PathLike) -> torch.Tensor:
    """The reference image as RGB in [0, 1], shape (1, 3, h, w)."""
    info = inspect_raster(path)
    if info.width * info.height > MAX_REFERENCE_PIXELS:
        raise ParameterError(
            f"reference image {path} is too large ({info.width}x{info.height}); "
            "crop a patch that shows the look you want"
        )
    tile = read_tile(info)
    bands = [info.data_bands[i] for i in rgb_bands(info.colorinterp, info.data_bands)]
    rgb = tile.data[bands].astype(np.float32)
    valid = tile.valid
    if not valid.any():
        raise ParameterError(f"reference image {path} has no valid pixels")
    if np.dtype(info.dtype) == np.uint8:
        rgb = rgb / 255.0
    else:  # a 2-98 % stretch per band, so uint16 or reflectance looks as it would on screen
        for k in range(3):
            lo, hi = np.percentile(rgb[k][valid], (2, 98))
            rgb[k] = (rgb[k] - lo) / max(hi - lo, 1e-6)
    rgb[:, ~valid] = rgb[:, valid].mean(axis=1)[:, None]
    return torch.from_numpy(np.clip(rgb, 0, 1))[None]


def mixed_target(
    clip, text_target: torch.Tensor, reference: torch.Tensor, weight: float
) -> torch.Tensor:
    """(1 - weight) * text + weight * image embedding of the reference, normalised."""
    if not 0.0 <= weight <= 1.0:
        raise ParameterError(f"reference weight must be between 0 and 1, got {weight}")
    with torch.no_grad():
        image = clip.encode_image(reference.to(text_target.device))[0]
    mixed = (1 - weight) * text_target + weight * image
    return mixed / mixed.norm().clamp_min(1e-12)
