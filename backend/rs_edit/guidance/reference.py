"""Multi-condition guidance: an example image as a second CLIP target beside the text.

"Make the ROI look like this example of flooded fields": the example's CLIP image embedding
and the prompt ensemble's text embedding are mixed (weights w and 1 - w, each normalised first,
the sum normalised again), so one CLIP objective steers towards both. (The example's pixels
act without CLIP too: its patches join the tile's in the engine, see `rs_edit.example`.)
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ParameterError


def clip_view(example, rgb: tuple[int, int, int]) -> torch.Tensor:
    """An `Example`'s valid pixels as CLIP sees them: its RGB positions `rgb` in [0, 1],
    shape (1, 3, h, w), the pixels outside its polygons or nodata set to its mean colour."""
    picture = (example.image[list(rgb)] + 1.0) / 2.0
    mean = picture[:, example.valid].mean(axis=1)
    picture = np.where(example.valid[None], picture, mean[:, None, None])
    return torch.from_numpy(np.clip(picture, 0, 1).astype(np.float32))[None]


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
